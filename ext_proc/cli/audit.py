"""`ledgergate audit verify|show|export|replay|checkpoint STORE`.

STORE is an audit directory (the file sink) or a postgresql:// DSN (with --table); it comes first
for every subcommand. Exit codes: 0 ok; 1 the check failed (verification, a record not found, a
what-if change the gate refuses); 2 the command could not run (missing store, file or key; bad
arguments).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from ext_proc.audit.query import replay
from ext_proc.audit.segments import StoreNotFound
from ext_proc.audit.verify import open_segments, verify_store


class Progress:
    """Records/s and ETA on a terminal (stderr), at most a few updates a second; nothing when
    stderr is not a terminal, so piped and CI output stays clean."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, records: int, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = records / elapsed
        eta = (total - done) / (done / elapsed) if done and total > done else 0
        pct = 100 * done / total if total else 100
        self.stream.write(f"\r{records:,} records  {pct:5.1f}%  {rate:,.0f} records/s  "
                          f"ETA {int(eta // 60)}:{int(eta % 60):02d}   ")
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="audit directory or postgresql:// DSN")
    p.add_argument("--table", default=None, help="PostgreSQL table (default ledgergate_audit)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument("--since", help="records at or after this time (ISO 8601, UTC if no offset, or unix ms)")
    g.add_argument("--until", help="records before this time")
    g.add_argument("--subject", help="identity subject")
    g.add_argument("--tenant", help="identity tenant")
    g.add_argument("--route", help="policy route, request path or API")
    g.add_argument("--decision", help="decision outcome (permit, deny, redact, observe) or code")
    g.add_argument("--label", help="classification label present in the request")


def _filter(a: argparse.Namespace):
    from ext_proc.audit.query import RecordFilter, parse_time

    return RecordFilter(since_ms=parse_time(a.since) if a.since else None,
                        until_ms=parse_time(a.until) if a.until else None,
                        subject=a.subject, tenant=a.tenant, route=a.route, decision=a.decision, label=a.label)


def _records(a: argparse.Namespace):
    from ext_proc.audit.query import filter_records, iter_records

    return filter_records(iter_records(open_segments(a.store, a.table)), _filter(a))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledgergate audit", description="verify, read and replay the audit store")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every segment: exact bytes, hashes, signatures, links, checkpoints")
    _add_store(v)
    v.add_argument("--trust", action="append", default=None, metavar="KEY_ID",
                   help="accept only segments signed by these key ids (repeatable)")
    v.add_argument("--jobs", type=int, default=None,
                   help="processes for hashes and signatures (default: one per CPU on large stores)")
    v.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="a checkpoint kept elsewhere: the store must extend it (repeatable)")
    v.add_argument("--witness", action="append", default=[], metavar="DIR|DSN",
                   help="a witness (directory or postgresql:// DSN): the store must extend every "
                        "checkpoint it holds (repeatable)")
    v.add_argument("--witness-table", default=None, help="table of a PostgreSQL witness (default ledgergate_checkpoints)")
    v.add_argument("--witness-key", action="append", default=[], metavar="VKEY",
                   help="a witness's verifier key (<name>+<hash>+<base64 key>): every checkpoint from "
                        "--witness must carry its valid cosignature (repeatable)")
    v.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    v.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: only when stderr is a terminal)")
    s = sub.add_parser("show", help="every record of one request")
    # The store may be left out here only (default var/audit): `audit show <x-request-id>` is
    # the one-liner the README and troubleshooting docs give for the local stack.
    s.add_argument("store", nargs="?", default="var/audit", help="audit directory or postgresql:// DSN (default var/audit)")
    s.add_argument("request_id")
    s.add_argument("--table", default=None, help="PostgreSQL table (default ledgergate_audit)")
    e = sub.add_parser("export", help="records as JSON lines for a SIEM (the stored bytes, unverified)")
    _add_store(e)
    _add_filters(e)
    r = sub.add_parser("replay", help="re-decide recorded inputs: under the recorded policy version "
                                      "(--policy-store) or under a candidate policy (--policy)")
    _add_store(r)
    _add_filters(r)
    how = r.add_mutually_exclusive_group()
    how.add_argument("--policy", metavar="CANDIDATE.yaml",
                     help="what-if: the candidate policy to re-decide every recorded input with")
    how.add_argument("--policy-store", default="var/policy-store",
                     help="content-addressed policy store (reproduce each decision under its own version)")
    r.add_argument("--fail-on", choices=("any", "stricter", "looser", "none"), default="any",
                   help="with --policy: which changes make the exit code 1 (default any)")
    r.add_argument("--samples", type=int, default=5, help="request ids shown per change")
    r.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    c = sub.add_parser("checkpoint", help="a C2SP checkpoint (tree size, RFC 6962 root) per verified segment")
    _add_store(c)
    c.add_argument("--sign", metavar="KEY_PEM", help="sign each checkpoint with this existing Ed25519 key "
                                                     "(the audit signing key, so verify checks it)")
    c.add_argument("--origin", default="ledgergate", help="origin prefix of the checkpoints")
    c.add_argument("--out", metavar="DIR", help="write one <segment>.checkpoint file per segment here "
                                                "(for verify --checkpoint / --witness)")
    return p


def run(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        a = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        return {"verify": _verify, "show": _show, "export": _export, "replay": _replay,
                "checkpoint": _checkpoint}[a.cmd](a, out, err)
    except StoreNotFound as exc:
        print(f"error: {exc}", file=err)
        return 2
    except BrokenPipeError:   # `... | head`
        return 0


def _verify(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ext_proc.audit.checkpoint import CheckpointError, cosignature_problem, load_checkpoint_file, parse_verifier_key
    from ext_proc.audit.verify import Problem, _fail
    from ext_proc.audit.witness import load_witness

    witnessed = []
    try:
        witness_keys = [parse_verifier_key(k) for k in a.witness_key]
        if witness_keys and not a.witness:
            raise CheckpointError("--witness-key needs --witness (the directory of cosigned checkpoints)")
        checkpoints = [load_checkpoint_file(f) for f in a.checkpoint]
        for d in a.witness:
            found = load_witness(d, a.witness_table)
            if not found:
                raise CheckpointError(f"witness {d} holds no checkpoints")
            witnessed += found
        checkpoints += witnessed
    except CheckpointError as exc:
        print(f"error: {exc}", file=err)
        return 2
    show = a.progress if a.progress is not None else (err.isatty() and not a.json)
    progress = Progress(err) if show else None
    trust = set(a.trust) if a.trust else None
    rep = verify_store(a.store, table=a.table, trusted_key_ids=trust, jobs=a.jobs, checkpoints=checkpoints,
                       progress=progress)
    if progress is not None:
        progress.end()
    # The witnesses' own signatures: each witnessed checkpoint was cosigned by every key given.
    for cp in witnessed:
        for key in witness_keys:
            bad = cosignature_problem(cp, key)
            if bad is not None:
                _fail(rep, Problem(cp.source, None, bad))
    if a.json:
        json.dump(rep.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
        return 0 if rep.ok else 1
    for w in rep.warnings:
        print(f"warning: {w}", file=err)
    if not rep.ok:
        print(f"FAILED: {rep.problem}", file=out)
        return 1
    keys = "trusted keys" if a.trust else f"keys from genesis records ({', '.join(sorted(rep.key_ids))})"
    extra = f"; extends {rep.checkpoints_checked} checkpoint(s) kept elsewhere" if checkpoints else ""
    if witness_keys:
        extra += f", each cosigned by {', '.join(k.name for k in witness_keys)}"
    print(f"OK: {rep.records} records in {rep.segments} segments verified against {keys}{extra}", file=out)
    return 0


def _show(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ext_proc.audit.query import iter_records

    found = 0
    for r in iter_records(open_segments(a.store, a.table)):
        if r.get("request_id") == a.request_id:
            print(json.dumps(r, indent=2, sort_keys=True), file=out)
            found += 1
    if not found:
        print(f"no record of request {a.request_id} in {a.store}", file=err)
        return 1
    return 0


def _export(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        records = _records(a)
        for r in records:
            out.write(json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    return 0


def _replay(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        records = _records(a)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    if a.policy:
        return _what_if(a, records, out, err)
    from ext_proc.policy import PolicyStore

    if not Path(a.policy_store).is_dir():
        print(f"error: policy store {a.policy_store} not found", file=err)
        return 2
    store = PolicyStore(a.policy_store)
    report = replay(records, lambda version, inp: store.get(version).evaluate(inp).to_record())
    if a.json:
        json.dump(report, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        for m in report["mismatches"][:50]:
            print(f"MISMATCH {m['request_id']}: recorded {m['recorded']} replayed {m['replayed']}", file=out)
        print(f"replayed {report['replayed']} decisions, {len(report['mismatches'])} mismatches, "
              f"{report['skipped']} without a policy decision (identity or input failures)", file=out)
    return 1 if report["mismatches"] or report["errors"] else 0


def _what_if(a: argparse.Namespace, records, out: TextIO, err: TextIO) -> int:
    from ext_proc.audit.query import what_if
    from ext_proc.policy.compile import PolicyError
    from ext_proc.policy.store import load_policy

    if not Path(a.policy).is_file():
        print(f"error: candidate policy {a.policy} not found", file=err)
        return 2
    try:
        policy = load_policy(a.policy)
    except PolicyError as exc:
        for line in exc.problems:
            print(line, file=err)
        return 2
    candidate = {"file": a.policy, "id": policy.id, "version": policy.version}
    rep = what_if(records, lambda inp: policy.evaluate(inp).to_record(), candidate, samples=a.samples)
    if a.json:
        json.dump(rep.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        print(f"candidate {a.policy} (version {policy.version[:16]}): {rep.replayed} decisions re-decided, "
              f"{rep.changed} would change ({rep.stricter} stricter, {rep.looser} looser), "
              f"{rep.skipped} without a recorded input", file=out)
        for title, counter in (("change", rep.transitions), ("rule", rep.by_rule), ("route", rep.by_route),
                               ("role", rep.by_role), ("label", rep.by_label)):
            for key, n in counter.most_common(20):
                print(f"  by {title:<6} {n:>8}  {key}", file=out)
        for key, ids in rep.samples.items():
            print(f"  sample {key}: {', '.join(str(i) for i in ids)}", file=out)
    gate = {"any": rep.changed, "stricter": rep.stricter, "looser": rep.looser, "none": 0}[a.fail_on]
    return 1 if gate else 0


def _checkpoint(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ext_proc.audit.chain import key_id, public_key_raw
    from ext_proc.audit.checkpoint import DirectoryWitness, checkpoint_body, key_name, origin_for, sign_note

    key: Ed25519PrivateKey | None = None
    if a.sign:
        if not Path(a.sign).is_file():
            print(f"error: signing key {a.sign} not found (checkpoint never creates a key)", file=err)
            return 2
        from cryptography.hazmat.primitives import serialization

        try:
            loaded = serialization.load_pem_private_key(Path(a.sign).read_bytes(), password=None)
        except ValueError as exc:
            print(f"error: {a.sign} is not a PEM private key ({exc})", file=err)
            return 2
        if not isinstance(loaded, Ed25519PrivateKey):
            print(f"error: {a.sign} is not an Ed25519 key", file=err)
            return 2
        key = loaded
    # Only what verifies is checkpointed: a checkpoint vouches for the records it covers.
    rep = verify_store(a.store, table=a.table)
    if rep.first is not None and not rep.segment_status:
        print(f"FAILED: {rep.problem}", file=out)
        return 1
    witness = DirectoryWitness(a.out) if a.out else None
    rc = 0
    for st in rep.segment_status:
        if not st.ok or st.root is None:
            print(f"FAILED: {st.problem} (no checkpoint for this segment)", file=err)
            rc = 1
            continue
        writer_id, segment_id = st.writer_id, st.segment_id
        if writer_id is None or segment_id is None:  # a verified genesis names both; never checkpoint "None"
            print(f"FAILED: {st.name}: the genesis names no writer or segment id (no checkpoint for this segment)",
                  file=err)
            rc = 1
            continue
        body = checkpoint_body(origin_for(writer_id, segment_id, a.origin), st.tree_size,
                               base64.b64decode(st.root))
        note = body
        if key is not None:
            pub = key.public_key()
            note = sign_note(body, key_name(key_id(pub)), public_key_raw(pub), key.sign)
        if witness is not None:
            witness.publish(writer_id, segment_id, st.tree_size, note)
        out.write(note.decode() + "\n")
    return rc
