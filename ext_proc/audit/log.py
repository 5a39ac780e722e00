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
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.checkpoint import HttpWitness
from ext_proc.audit.config import AuditConfig
from ext_proc.audit.merkle import MerkleFrontier, ProofWindow, leaf_hash
from ext_proc.audit.sink import AuditSink
from ext_proc.keyfiles import load_or_create_ed25519

_log = logging.getLogger(__name__)


_STOP = None
"""The last item of the writer's queue (AuditLog.close)."""


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

    def __init__(self, sink: AuditSink, chain: ChainWriter, *, max_queue: int = 10000, max_batch: int = 512,
                 clock: Callable[[], float] = time.time, recovered: list[dict[str, Any]] | None = None,
                 predecessors: list[dict[str, Any]] | None = None, witnesses: list[Any] | None = None,
                 witness_interval_s: float = 60.0) -> None:
        self.sink = sink
        self.chain = chain
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.clock = clock
        # Commits go to the writer thread through a C queue: one item per commit (its lines and
        # its future), `_STOP` last. Its put and get are each one call without Python-level
        # locking, so the writer is woken with one futex call and no Condition bookkeeping.
        self._queue: queue.SimpleQueue[tuple[list[bytes], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._pending = 0                 # records queued and not yet settled (event loop only)
        self._failed: str | None = None   # set once, by the writer thread or start()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._frontier = MerkleFrontier()
        self._recovered = recovered or []
        self._predecessors = predecessors or []
        self._witnesses = list(witnesses or [])
        self._witness_interval_s = witness_interval_s
        self._witness_task: asyncio.Task[Any] | None = None
        self._witness_lock: asyncio.Lock | None = None
        self._last_fut: asyncio.Future[Any] | None = None
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

    def _enqueue(self, record: dict[str, Any], line: bytes) -> asyncio.Future[Any]:
        return self._enqueue_together([(record, line)])

    def _enqueue_together(self, sealed: list[tuple[dict[str, Any], bytes]]) -> asyncio.Future[Any]:
        """Queue records under one future: the writer never splits them across batches, so they
        reach the sink in one write and one fsync, and the future settles once all are durable.
        The Merkle leaves are appended before the writer is woken: once it is, the event loop
        should let go of the GIL as soon as it can (the writer needs it to start)."""
        assert self._loop is not None, "AuditLog.start() first"
        if self._failed is not None:
            raise AuditUnavailable(self._failed)
        fut = self._loop.create_future()
        for record, _ in sealed:
            leaf = leaf_hash(bytes.fromhex(record["hash"]))
            self._frontier.append(leaf)
            if self._proofs is not None:
                self._proofs.append(leaf)
        self._last_fut = fut
        self._pending += len(sealed)
        # A writer that failed meanwhile still takes this item and fails it (_write_loop).
        self._queue.put(([line + b"\n" for _, line in sealed], fut))
        return fut

    async def commit(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._failed is not None or self._closed:
            raise AuditUnavailable(self._failed or "audit log closed")
        if self._pending >= self.max_queue:
            raise AuditUnavailable("audit queue full")
        record, line = self.chain.seal_line(body, int(self.clock() * 1000))
        # A cancelled caller cancels only its wait: the record is sealed and is written anyway.
        await self._enqueue(record, line)
        return record

    async def commit_together(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Seal the records in this order and make them durable in one write and one fsync
        (a cache hit's decision and outcome: issue 22); returns once all of them are, and none
        is returned as committed unless all are."""
        records, durable = self.begin_together(bodies)
        await durable
        return records

    def begin_together(self, bodies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], asyncio.Future[Any]]:
        """`commit_together` in two steps: seal and queue now (AuditUnavailable when the log
        cannot take them), and the future that settles once all of them are durable (or fails
        for all of them). The caller may prepare its answer meanwhile and release nothing before
        the future is done. A cancelled wait cancels only the wait: the records are written anyway."""
        if self._failed is not None or self._closed:
            raise AuditUnavailable(self._failed or "audit log closed")
        if self._pending + len(bodies) > self.max_queue:
            raise AuditUnavailable("audit queue full")
        now = int(self.clock() * 1000)
        sealed = [self.chain.seal_line(body, now) for body in bodies]
        durable = self._enqueue_together(sealed)
        return [record for record, _ in sealed], durable

    def _write_loop(self) -> None:
        """The writer thread: one write + fsync per batch (whatever has queued up since the last
        one, up to `max_batch` records, never cutting a commit's records), in chain order. It
        never ends with a commit left waiting: whatever stops it fails every record not yet
        durable, and every commit queued after that, until `_STOP`."""
        q = self._queue
        batch: list[tuple[list[bytes], asyncio.Future[Any]]] = []
        stop = False
        try:
            while not stop:
                item = q.get()
                if item is _STOP:
                    return
                batch, n = [item], len(item[0])
                while n < self.max_batch:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                    n += len(item[0])
                self.sink.write_batch([line for lines, _ in batch for line in lines])
                self._hand_back(batch, None)
                batch = []
        except BaseException as exc:  # noqa: BLE001 - any failure makes the log unavailable
            # Records of this batch may or may not be in the sink: the chain cannot go on.
            self._failed = f"audit sink failed: {type(exc).__name__}"
            self._hand_back(batch, self._failed)
            while not stop:
                item = q.get()
                if item is _STOP:
                    return
                self._hand_back([item], self._failed)

    def _hand_back(self, batch: list[tuple[list[bytes], asyncio.Future[Any]]], error: str | None) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._settle, batch, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for these futures any more

    def _settle(self, batch: list[tuple[list[bytes], asyncio.Future[Any]]], error: str | None) -> None:
        self._pending -= sum(len(lines) for lines, _ in batch)
        if error is not None:
            self.ready = False
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(AuditUnavailable(error))
            return
        self.batches += 1
        self.records += sum(len(lines) for lines, _ in batch)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    def checkpoint_body(self) -> dict[str, Any]:
        return {"schema": "ledgergate.audit/v1", "kind": "checkpoint", "tree_size": self._frontier.size,
                "root": base64.b64encode(self._frontier.root()).decode()}

    def signed_checkpoint(self, size: int, root: bytes) -> bytes:
        """A C2SP checkpoint of this segment at `size`, signed with the segment's key."""
        from ext_proc.audit.chain import public_key_raw
        from ext_proc.audit.checkpoint import checkpoint_body, key_name, origin_for, sign_note

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
        self._queue.put(_STOP)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self.sink.close)
        self.ready = False


def open_audit_log(config: AuditConfig, *, writer_id: str) -> AuditLog:
    from ext_proc.audit.witness import open_witnesses

    witnesses = open_witnesses(config.witnesses)
    interval = config.witness_interval_s
    key = load_or_create_signing_key(config.signing_key)
    segment_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    chain = ChainWriter(key, writer_id, segment_id)
    if config.sink == "postgres":
        from ext_proc.audit.postgres import PostgresSink

        assert config.dsn is not None   # AuditConfig requires it for this sink
        return AuditLog(PostgresSink(config.dsn, config.table), chain,
                        witnesses=witnesses, witness_interval_s=interval)
    directory = config.dir
    directory.mkdir(parents=True, exist_ok=True)
    torn, predecessors = recovered_state(directory)
    return AuditLog(FileSink(directory), chain, recovered=torn, predecessors=predecessors,
                    witnesses=witnesses, witness_interval_s=interval)
