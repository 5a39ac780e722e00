"""The durable audit log: records are sealed into the chain in the event loop, written in batches
by one writer thread (one write + fsync per batch, off the event loop), and `commit` returns only
once the record's batch is durable. Group commit batches the fsyncs, never the guarantee."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.checkpoint import HttpWitness
from ext_proc.audit.merkle import MerkleFrontier, ProofWindow, leaf_hash
from ext_proc.keyfiles import load_or_create_ed25519


_log = logging.getLogger(__name__)


class AuditUnavailable(Exception):
    """The audit sink cannot take records now: the caller fails closed (503)."""


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    return load_or_create_ed25519(path, "audit signing key")


def _tail(path: Path) -> tuple[int, bytes, bytes | None]:
    """(end of the last complete line, torn bytes after it, the last complete line), reading
    backwards in blocks: a restart must not read every segment whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos, buf = size, b""
        while pos > 0 and buf.count(b"\n") < 2:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    i = buf.rfind(b"\n")
    if i < 0:
        return 0, buf, None
    j = buf.rfind(b"\n", 0, i)   # -1 when the last line is also the first: it starts at pos == 0
    return pos + i + 1, buf[i + 1:], buf[j + 1:i]


def find_torn_tails(directory: Path) -> list[dict[str, Any]]:
    """Segments whose last write was cut short by a crash: the partial line's digest and offset
    (an empty segment, a crash before its genesis reached the disk, is a torn tail of length 0)."""
    return recovered_state(directory)[0]


def recovered_state(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a new segment's genesis attests about the segments already in the directory:
    - torn tails (a crash mid-write), so `audit verify` accepts exactly those bytes;
    - predecessors: every segment without a closing checkpoint (a crash) and the newest segment,
      with its record count and last hash, so a later truncation of one of them, or the removal of
      a segment between two others, fails verification instead of passing as a crash."""
    torn, predecessors, newest = [], [], None
    for f in sorted(directory.glob("*.jsonl")):
        end, partial, last = _tail(f)
        if partial or end == 0:
            torn.append({"file": f.name, "offset": end, "length": len(partial),
                         "sha256": hashlib.sha256(partial).hexdigest()})
        if last is None:
            continue
        try:
            rec = json.loads(last)
            entry = {"file": f.name, "records": int(rec["seq"]) + 1, "last_hash": str(rec["hash"])}
            last_ms = int(rec.get("committed_ms") or 0)
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("kind") != "checkpoint":
            predecessors.append(entry)
        # The newest: the segment written to last (a segment id is only second-precise).
        if newest is None or (last_ms, f.name) > newest[0]:
            newest = ((last_ms, f.name), entry)
    if newest is not None and newest[1] not in predecessors:
        predecessors.append(newest[1])
    return torn, predecessors


class FileSink:
    """Append-only JSON-lines segment files: <dir>/<writer_id>-<segment_id>.jsonl."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None
        self.path: Path | None = None

    def open(self, writer_id: str, segment_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in writer_id)
        self.path = self.directory / f"{safe}-{segment_id}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new file's directory entry is durable too
        finally:
            os.close(dfd)

    def write_batch(self, lines: list[bytes]) -> None:
        assert self._fd is not None
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AuditLog:
    """Records are sealed on the event loop (the chain order is the commit order) and handed to
    one writer thread, which writes and fsyncs whatever has queued up since its last batch and
    hands the batch's futures back in one loop callback. One wake-up each way per batch: a
    thread pool per batch (asyncio.to_thread) cost three more loop turns per commit."""

    def __init__(self, sink, chain: ChainWriter, *, max_queue: int = 10000, max_batch: int = 512,
                 clock: Callable[[], float] = time.time, recovered: list[dict] | None = None,
                 predecessors: list[dict] | None = None, witnesses: list | None = None,
                 witness_interval_s: float = 60.0) -> None:
        self.sink = sink
        self.chain = chain
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.clock = clock
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, asyncio.Future]] = []   # guarded by _cond
        self._stopping = False                                  # guarded by _cond
        self._failed: str | None = None   # set once, by the writer thread (under _cond) or start()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._frontier = MerkleFrontier()
        self._recovered = recovered or []
        self._predecessors = predecessors or []
        self._witnesses = list(witnesses or [])
        self._witness_interval_s = witness_interval_s
        self._witness_task: asyncio.Task | None = None
        self._witness_lock: asyncio.Lock | None = None
        self._last_fut: asyncio.Future | None = None
        # Consistency proofs for witnesses that check them (C2SP tlog-witness over HTTP).
        self._proofs = ProofWindow() if any(isinstance(w, HttpWitness) for w in self._witnesses) else None
        self.published_size = 0
        self.witness_failures = 0
        self.ready = False
        self.batches = 0
        self.records = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.sink.open, self.chain.writer_id, self.chain.segment_id)
        self._writer = threading.Thread(target=self._write_loop, name="ledgergate-audit-writer", daemon=True)
        self._writer.start()
        # Torn tails of earlier segments (a crash mid-write) are attested in this genesis record.
        extra: dict[str, Any] = {}
        if self._recovered:
            extra["recovered_torn_tails"] = self._recovered
        if self._predecessors:
            extra["predecessors"] = self._predecessors
        genesis = self.chain.genesis(int(self.clock() * 1000), extra or None)
        try:
            await self._enqueue(genesis, canonical_json(genesis))
        except AuditUnavailable:
            pass
        self.ready = self._failed is None  # a genesis that did not reach the sink is no start
        self._witness_lock = asyncio.Lock()
        if self.ready and self._witnesses and self._witness_interval_s > 0:
            self._witness_task = asyncio.create_task(self._publish_every(self._witness_interval_s))

    def _enqueue(self, record: dict[str, Any], line: bytes) -> asyncio.Future:
        return self._enqueue_together([(record, line)])

    def _enqueue_together(self, sealed: list[tuple[dict[str, Any], bytes]]) -> asyncio.Future:
        """Queue records under one future: the writer never splits them across batches, so they
        reach the sink in one write and one fsync, and the future settles once all are durable."""
        assert self._loop is not None, "AuditLog.start() first"
        fut = self._loop.create_future()
        with self._cond:
            if self._failed is not None:
                raise AuditUnavailable(self._failed)
            self._queue.extend((line + b"\n", fut) for _, line in sealed)
            self._cond.notify()
        for record, _ in sealed:
            leaf = leaf_hash(bytes.fromhex(record["hash"]))
            self._frontier.append(leaf)
            if self._proofs is not None:
                self._proofs.append(leaf)
        self._last_fut = fut
        return fut

    async def commit(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._failed is not None or self._closed:
            raise AuditUnavailable(self._failed or "audit log closed")
        if len(self._queue) >= self.max_queue:
            raise AuditUnavailable("audit queue full")
        record, line = self.chain.seal_line(body, int(self.clock() * 1000))
        # A cancelled caller cancels only its wait: the record is sealed and is written anyway.
        await self._enqueue(record, line)
        return record

    async def commit_together(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Seal the records in this order and make them durable in one write and one fsync
        (a cache hit's decision and outcome: issue 22); returns once all of them are, and none
        is returned as committed unless all are."""
        if self._failed is not None or self._closed:
            raise AuditUnavailable(self._failed or "audit log closed")
        if len(self._queue) + len(bodies) > self.max_queue:
            raise AuditUnavailable("audit queue full")
        now = int(self.clock() * 1000)
        sealed = [self.chain.seal_line(body, now) for body in bodies]
        await self._enqueue_together(sealed)
        return [record for record, _ in sealed]

    def _write_loop(self) -> None:
        """The writer thread: one write + fsync per batch, in chain order. It never ends with a
        commit left waiting: whatever stops it fails every record not yet durable."""
        batch: list[tuple[bytes, asyncio.Future]] = []
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        return
                    n = min(len(self._queue), self.max_batch)
                    # Records committed together share a future: never cut between them.
                    while n < len(self._queue) and self._queue[n][1] is self._queue[n - 1][1]:
                        n += 1
                    batch, self._queue = self._queue[:n], self._queue[n:]
                self.sink.write_batch([line for line, _ in batch])
                self._hand_back(batch, None)
                batch = []
        except BaseException as exc:  # noqa: BLE001 - any failure makes the log unavailable
            with self._cond:
                # Records of this batch may or may not be in the sink: the chain cannot go on.
                self._failed = f"audit sink failed: {type(exc).__name__}"
                batch, self._queue = batch + self._queue, []
            self._hand_back(batch, self._failed)

    def _hand_back(self, batch: list[tuple[bytes, asyncio.Future]], error: str | None) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._settle, batch, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for these futures any more

    def _settle(self, batch: list[tuple[bytes, asyncio.Future]], error: str | None) -> None:
        if error is not None:
            self.ready = False
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(AuditUnavailable(error))
            return
        self.batches += 1
        self.records += len(batch)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    def checkpoint_body(self) -> dict[str, Any]:
        return {"schema": "ledgergate.audit/v1", "kind": "checkpoint", "tree_size": self._frontier.size,
                "root": base64.b64encode(self._frontier.root()).decode()}

    def signed_checkpoint(self, size: int, root: bytes) -> bytes:
        """A C2SP checkpoint of this segment at `size`, signed with the segment's key."""
        from ext_proc.audit.checkpoint import checkpoint_body, key_name, origin_for, sign_note
        from ext_proc.audit.chain import public_key_raw

        body = checkpoint_body(origin_for(self.chain.writer_id, self.chain.segment_id), size, root)
        return sign_note(body, key_name(self.chain.key_id), public_key_raw(self.chain.public_key), self.chain.sign)

    async def publish_checkpoint(self) -> bool:
        """Publish a signed checkpoint of the records durable so far to every witness. Only after
        the last record it covers is durable (a witness must never hold a size the store cannot
        show); never a size smaller than one already published. A witness that fails is counted
        and logged, not fatal: the store itself stays the evidence, the witness its guard."""
        if not self._witnesses or self._witness_lock is None:
            return False
        async with self._witness_lock:
            size, root, last = self._frontier.size, self._frontier.root(), self._last_fut
            stack = self._frontier.snapshot()
            if size <= self.published_size or last is None:
                return False
            try:
                await asyncio.shield(last)
            except Exception:  # noqa: BLE001 - a record that did not become durable: nothing to publish
                return False
            note = self.signed_checkpoint(size, root)
            proofs = self._proofs
            prove = None if proofs is None else (
                lambda old: proofs.proof(old, size) if proofs.can_prove_from(old) else None)
            published = False
            for w in self._witnesses:
                try:
                    await asyncio.to_thread(w.publish, self.chain.writer_id, self.chain.segment_id, size, note,
                                            prove)
                    published = True
                except Exception as exc:  # noqa: BLE001
                    self.witness_failures += 1
                    _log.warning("audit witness %s failed: %s", getattr(w, "name", w), type(exc).__name__)
            if published:
                self.published_size = size
            if proofs is not None:
                proofs.mark(size, stack)
            return published

    async def _publish_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.publish_checkpoint()

    async def close(self) -> None:
        if self._closed:
            return
        if self._witness_task is not None:
            self._witness_task.cancel()
            try:
                await self._witness_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._failed is None and self.ready:
            try:
                await self.commit(self.checkpoint_body())
            except AuditUnavailable:
                pass
            # On drain: the witnesses get the closing size, the closing checkpoint record included.
            await self.publish_checkpoint()
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self.sink.close)
        self.ready = False


def open_audit_log(config: dict, *, signing_key_path: str, writer_id: str) -> AuditLog:
    sink_kind = config.get("sink", "file")
    from ext_proc.audit.witness import open_witnesses

    witness_cfg = config.get("witness")
    witnesses = open_witnesses(witness_cfg)
    interval = float((witness_cfg[0] if isinstance(witness_cfg, list) else witness_cfg or {}).get("interval_s", 60))
    key = load_or_create_signing_key(signing_key_path)
    segment_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    chain = ChainWriter(key, writer_id, segment_id)
    if sink_kind == "postgres":
        from ext_proc.audit.postgres import PostgresSink

        return AuditLog(PostgresSink(config["dsn"], config.get("table", "ledgergate_audit")), chain,
                        witnesses=witnesses, witness_interval_s=interval)
    if sink_kind != "file":
        raise ValueError(f"audit.sink {sink_kind!r}: expected file or postgres")
    directory = Path(config.get("dir", "var/audit"))
    directory.mkdir(parents=True, exist_ok=True)
    torn, predecessors = recovered_state(directory)
    return AuditLog(FileSink(directory), chain, recovered=torn, predecessors=predecessors,
                    witnesses=witnesses, witness_interval_s=interval)
