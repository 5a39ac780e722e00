"""The durable audit log: records are sealed into the chain in the event loop, written in batches
by one writer thread (one write + fsync per batch, off the event loop), and `commit` returns only
once the record's batch is durable. Group commit batches the fsyncs, never the guarantee."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.merkle import MerkleFrontier, leaf_hash
from ext_proc.keyfiles import load_or_create_ed25519


class AuditUnavailable(Exception):
    """The audit sink cannot take records now: the caller fails closed (503)."""


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    return load_or_create_ed25519(path, "audit signing key")


def find_torn_tails(directory: Path) -> list[dict[str, Any]]:
    """Segments whose last write was cut short by a crash: the partial line's digest and offset."""
    torn = []
    for f in sorted(directory.glob("*.jsonl")):
        data = f.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn.append({"file": f.name, "offset": cut, "length": len(data) - cut,
                         "sha256": hashlib.sha256(data[cut:]).hexdigest()})
    return torn


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
                 clock: Callable[[], float] = time.time, recovered: list[dict] | None = None) -> None:
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
        self.ready = False
        self.batches = 0
        self.records = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.sink.open, self.chain.writer_id, self.chain.segment_id)
        self._writer = threading.Thread(target=self._write_loop, name="ledgergate-audit-writer", daemon=True)
        self._writer.start()
        # Torn tails of earlier segments (a crash mid-write) are attested in this genesis record.
        extra = {"recovered_torn_tails": self._recovered} if self._recovered else None
        genesis = self.chain.genesis(int(self.clock() * 1000), extra)
        try:
            await self._enqueue(genesis, canonical_json(genesis))
        except AuditUnavailable:
            pass
        self.ready = self._failed is None  # a genesis that did not reach the sink is no start

    def _enqueue(self, record: dict[str, Any], line: bytes) -> asyncio.Future:
        assert self._loop is not None, "AuditLog.start() first"
        fut = self._loop.create_future()
        with self._cond:
            if self._failed is not None:
                raise AuditUnavailable(self._failed)
            self._queue.append((line + b"\n", fut))
            self._cond.notify()
        self._frontier.append(leaf_hash(bytes.fromhex(record["hash"])))
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
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
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

    async def close(self) -> None:
        if self._closed:
            return
        if self._failed is None and self.ready:
            try:
                await self.commit(self.checkpoint_body())
            except AuditUnavailable:
                pass
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
    key = load_or_create_signing_key(signing_key_path)
    segment_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    chain = ChainWriter(key, writer_id, segment_id)
    if sink_kind == "postgres":
        from ext_proc.audit.postgres import PostgresSink

        return AuditLog(PostgresSink(config["dsn"], config.get("table", "ledgergate_audit")), chain)
    if sink_kind != "file":
        raise ValueError(f"audit.sink {sink_kind!r}: expected file or postgres")
    directory = Path(config.get("dir", "var/audit"))
    directory.mkdir(parents=True, exist_ok=True)
    return AuditLog(FileSink(directory), chain, recovered=find_torn_tails(directory))
