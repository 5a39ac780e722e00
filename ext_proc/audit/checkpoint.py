"""Checkpoints that outlive the store: C2SP tlog checkpoints (https://c2sp.org/tlog-checkpoint) in
signed notes (https://c2sp.org/signed-note), and witnesses they are published to.

A checkpoint names one segment (origin `<prefix>/<writer_id>/<segment_id>`), its tree size and its
RFC 6962 root. Kept outside the writers' trust boundary (another directory or server, WORM
storage), it lets `ledgergate audit verify STORE --checkpoint FILE` / `--witness DIR` prove with a
consistency proof that the store still extends it: records removed from the end, or removed or
rewritten before it, fail verification, which the hash chain alone cannot show for the tail.

Note text:

    ledgergate/<writer_id>/<segment_id>
    <tree size>
    <base64 root>

    — ledgergate-<key_id> <base64(4-byte key hash || Ed25519 signature over the text above)>

The key hash is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || raw public key), as the
signed-note spec defines for Ed25519. The signing key is the segment's own audit key, so the
verifier checks it against the public key in the segment's genesis record.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey


ORIGIN_PREFIX = "ledgergate"


@dataclass
class Checkpoint:
    """A tree head for one segment, as kept outside the store."""
    origin: str
    writer_id: str
    segment_id: str
    size: int
    root: bytes
    source: str                       # where it came from, for messages
    signatures: list[tuple[str, bytes]] = field(default_factory=list)   # (key name, key hash + signature)
    body: bytes = b""
MAX_NOTE_BYTES = 64 * 1024
_DASH = "\u2014"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a ledgergate checkpoint."""


def origin_for(writer_id: str, segment_id: str, prefix: str = ORIGIN_PREFIX) -> str:
    return f"{prefix}/{writer_id}/{segment_id}"


def checkpoint_body(origin: str, size: int, root: bytes) -> bytes:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def key_name(kid: str) -> str:
    return f"ledgergate-{kid}"


def note_key_hash(name: str, public_key_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + public_key_raw).digest()[:4]


def sign_note(body: bytes, name: str, public_key_raw: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """The body followed by one signature line (`sign(message) -> 64-byte Ed25519 signature`)."""
    sig = note_key_hash(name, public_key_raw) + sign(body)
    return body + f"\n{_DASH} {name} {base64.b64encode(sig).decode()}\n".encode()


def parse_note(data: bytes, source: str) -> Checkpoint:
    if len(data) > MAX_NOTE_BYTES:
        raise CheckpointError(f"{source}: larger than {MAX_NOTE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{source}: not UTF-8") from exc
    body, sep, sigs = text.partition("\n\n")
    body_lines = body.split("\n")
    if len(body_lines) < 3:
        raise CheckpointError(f"{source}: expected origin, tree size and root lines")
    origin, size_s, root_s = body_lines[:3]
    parts = origin.split("/")
    if len(parts) < 3 or not size_s.isdigit():
        raise CheckpointError(f"{source}: origin must be <prefix>/<writer_id>/<segment_id> and size a number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError as exc:
        raise CheckpointError(f"{source}: root is not base64") from exc
    if len(root) != 32:
        raise CheckpointError(f"{source}: root is not a SHA-256 hash")
    signatures = []
    for line in sigs.split("\n") if sep else []:
        if not line:
            continue
        bits = line.split(" ")
        if len(bits) != 3 or bits[0] != _DASH:
            raise CheckpointError(f"{source}: malformed signature line")
        try:
            signatures.append((bits[1], base64.b64decode(bits[2], validate=True)))
        except ValueError as exc:
            raise CheckpointError(f"{source}: signature is not base64") from exc
    return Checkpoint(origin=origin, writer_id="/".join(parts[1:-1]), segment_id=parts[-1], size=int(size_s),
                      root=root, source=source, signatures=signatures, body=(body + "\n").encode())


def signature_problem(cp: Checkpoint, public_key_raw: bytes, kid: str) -> str | None:
    """None when the checkpoint is signed by the segment's key; else why not. Unsigned checkpoints
    (an auditor's own copy of `audit checkpoint` output) are accepted: their root is the evidence."""
    if not cp.signatures:
        return None
    name = key_name(kid)
    verify = VerifyKey(public_key_raw).verify
    for signer, sig in cp.signatures:
        if signer == name and sig[:4] == note_key_hash(name, public_key_raw):
            try:
                verify(cp.body, sig[4:])
                return None
            except (BadSignatureError, ValueError):
                return f"the signature of {cp.source} does not verify with the segment's key"
    return f"{cp.source} is not signed by the segment's key ({name})"


# --- witness cosignatures (https://c2sp.org/tlog-cosignature) -----------------------------------
# A witness's reply to add-checkpoint is its cosignature line(s). Appended to the checkpoint they
# make a co-signed note, which an HTTP witness keeps next to the checkpoint (HttpWitness `keep`)
# and `audit verify --witness DIR --witness-key VKEY` checks against the witness's public key.
ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04


@dataclass
class WitnessKey:
    """A signed-note verifier key `<name>+<hex key hash>+<base64(alg || Ed25519 public key)>`."""
    name: str
    key_hash: bytes
    alg: int
    public_key: bytes


def parse_verifier_key(vkey: str) -> WitnessKey:
    name, sep1, rest = vkey.strip().partition("+")
    hash_hex, sep2, key_b64 = rest.partition("+")
    try:
        raw = base64.b64decode(key_b64, validate=True)
        key_hash = bytes.fromhex(hash_hex)
    except ValueError as exc:
        raise CheckpointError(f"witness key {vkey!r}: not <name>+<hex hash>+<base64 key>") from exc
    if not (sep1 and sep2 and name) or len(key_hash) != 4 or len(raw) != 33 or raw[0] not in (
            ALG_ED25519, ALG_COSIGNATURE_V1):
        raise CheckpointError(f"witness key {vkey!r}: not an Ed25519 or cosignature/v1 verifier key")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != key_hash:
        raise CheckpointError(f"witness key {vkey!r}: the key hash does not match the key")
    return WitnessKey(name, key_hash, raw[0], raw[1:])


def cosignature_problem(cp: Checkpoint, key: WitnessKey) -> str | None:
    """None when CP carries a valid signature by the witness KEY (cosignature/v1: over
    "cosignature/v1\ntime <t>\n" + the checkpoint; plain Ed25519: over the checkpoint)."""
    verify = VerifyKey(key.public_key).verify
    for signer, sig in cp.signatures:
        if signer != key.name or sig[:4] != key.key_hash:
            continue
        try:
            if key.alg == ALG_COSIGNATURE_V1:
                if len(sig) != 4 + 8 + 64:
                    return f"{cp.source}: the cosignature of {key.name} is malformed"
                when = int.from_bytes(sig[4:12], "big")
                verify(b"cosignature/v1\ntime %d\n" % when + cp.body, sig[12:])
            else:
                verify(cp.body, sig[4:])
            return None
        except (BadSignatureError, ValueError):
            return f"{cp.source}: the cosignature of {key.name} does not verify"
    return f"{cp.source}: no cosignature of witness {key.name}"


def cosignature_lines(reply: bytes, source: str) -> bytes:
    """The signature lines of a witness's reply, checked for shape (bounded; nothing else kept)."""
    if len(reply) > MAX_NOTE_BYTES:
        raise CheckpointError(f"{source}: cosignature reply larger than {MAX_NOTE_BYTES} bytes")
    lines = [line for line in reply.decode("utf-8", "replace").split("\n") if line]
    for line in lines:
        bits = line.split(" ")
        if len(bits) != 3 or bits[0] != _DASH:
            raise CheckpointError(f"{source}: the reply is not cosignature lines")
        try:
            base64.b64decode(bits[2], validate=True)
        except ValueError as exc:
            raise CheckpointError(f"{source}: a cosignature is not base64") from exc
    if not lines:
        raise CheckpointError(f"{source}: the reply holds no cosignature")
    return "".join(line + "\n" for line in lines).encode()


def load_checkpoint_file(path: str | Path) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    return parse_note(p.read_bytes()[:MAX_NOTE_BYTES + 1], str(path))


def load_witness_dir(path: str | Path) -> list[Checkpoint]:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"witness directory {path} not found")
    return [load_checkpoint_file(f) for f in sorted(p.glob("*.checkpoint"))]


class DirectoryWitness:
    """A witness that is a directory (another disk, a mounted WORM bucket): one file per segment,
    `<writer>-<segment_id>.checkpoint`, replaced atomically by each newer checkpoint and never by
    an older one."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.name = f"dir:{self.directory}"

    def publish(self, writer_id: str, segment_id: str, size: int, note: bytes, proofs=None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in writer_id)
        target = self.directory / f"{safe}-{segment_id}.checkpoint"
        if target.exists():
            try:
                if parse_note(target.read_bytes(), str(target)).size >= size:
                    return
            except CheckpointError:
                pass
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, note)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class WitnessRefused(Exception):
    """An HTTP witness did not accept a checkpoint (its status and reason in the message)."""


class HttpWitness:
    """A C2SP tlog-witness (https://c2sp.org/tlog-witness): `POST <url>/add-checkpoint` with the
    size the witness last accepted from us, the RFC 6962 consistency proof from that size and the
    new signed checkpoint. The witness checks the proof before it cosigns, so a history rewritten
    after a checkpoint was witnessed is refused by the witness itself, not only found by a later
    `audit verify`. `proofs(old_size)` gives the proof, or None when that size is too old to prove
    from (a witness unreachable for longer than the proof window)."""

    def __init__(self, url: str, timeout_s: float = 5.0, keep: str | Path | None = None) -> None:
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.name = f"http:{url}"
        self.timeout_s = timeout_s
        self._accepted: dict[str, int] = {}      # origin -> size the witness last accepted
        self.cosignatures: dict[str, bytes] = {}  # origin -> the witness's latest cosignature lines
        # Where the co-signed checkpoints go (a directory `audit verify --witness` reads): the
        # witness's signature is the evidence it saw this size, so it is kept, not only sent.
        self.keep = DirectoryWitness(keep) if keep else None

    def publish(self, writer_id: str, segment_id: str, size: int, note: bytes, proofs=None) -> None:
        origin = note.split(b"\n", 1)[0].decode()
        old = self._accepted.get(origin, 0)
        proof = proofs(old) if proofs is not None else ([] if old == 0 else None)
        if proof is None:
            raise WitnessRefused(f"{self.name}: no consistency proof from size {old} any more")
        r = self._post(old, proof, note)
        if r.status_code == 409 and r.text.strip().isdigit() and int(r.text.strip()) != old:
            # The witness holds another size of ours (a reply lost after it accepted): prove from
            # that one if the proof window still can, once.
            theirs = int(r.text.strip())
            proof = proofs(theirs) if proofs is not None and theirs <= size else None
            if proof is None:
                raise WitnessRefused(f"{self.name}: the witness holds size {theirs}, not {old}")
            r = self._post(theirs, proof, note)
        if r.status_code != 200:
            raise WitnessRefused(f"{self.name}: status {r.status_code}")
        self._accepted[origin] = size
        try:
            cosigned = cosignature_lines(r.content, self.name)
        except CheckpointError as exc:
            raise WitnessRefused(str(exc)) from None
        self.cosignatures[origin] = cosigned
        if self.keep is not None:
            self.keep.publish(writer_id, segment_id, size, note + cosigned)

    def _post(self, old: int, proof: list[bytes], note: bytes):
        import httpx

        body = f"old {old}\n".encode() + b"".join(base64.b64encode(p) + b"\n" for p in proof) + b"\n" + note
        return httpx.post(self.url, content=body, timeout=self.timeout_s,
                          headers={"content-type": "text/plain; charset=utf-8"})
