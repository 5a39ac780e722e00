"""The durable audit log: records are sealed into the chain in the event loop, written in batches
by one flusher (one write + fsync per batch, off the event loop), and `commit` returns only once
the record's batch is durable. Group commit batches the fsyncs, never the guarantee."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.merkle import leaf_hash, merkle_root
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
    def __init__(self, sink, chain: ChainWriter, *, max_queue: int = 10000, max_batch: int = 512,
                 clock: Callable[[], float] = time.time, recovered: list[dict] | None = None) -> None:
        self.sink = sink
        self.chain = chain
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.clock = clock
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._failed: str | None = None
        self._closed = False
        self._leaves: list[bytes] = []
        self._recovered = recovered or []
        self.ready = False
        self.batches = 0
        self.records = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.sink.open, self.chain.writer_id, self.chain.segment_id)
        # Torn tails of earlier segments (a crash mid-write) are attested in this genesis record.
        extra = {"recovered_torn_tails": self._recovered} if self._recovered else None
        genesis = self.chain.genesis(int(self.clock() * 1000), extra)
        self._enqueue(genesis)
        await self._flush_now()
        self.ready = self._failed is None  # a genesis that did not reach the sink is no start

    def _enqueue(self, record: dict[str, Any], line: bytes | None = None) -> asyncio.Future:
        line = (line if line is not None else canonical_json(record)) + b"\n"
        self._leaves.append(leaf_hash(bytes.fromhex(record["hash"])))
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((line, fut))
        return fut

    async def commit(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._failed is not None or self._closed:
            raise AuditUnavailable(self._failed or "audit log closed")
        if len(self._pending) >= self.max_queue:
            raise AuditUnavailable("audit queue full")
        record, line = self.chain.seal_line(body, int(self.clock() * 1000))
        fut = self._enqueue(record, line)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        await asyncio.shield(fut)
        return record

    async def _flush_now(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        await self._flusher

    async def _flush_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                await asyncio.to_thread(self.sink.write_batch, [line for line, _ in batch])
            except Exception as exc:  # noqa: BLE001 - any sink failure makes the log unavailable
                self._failed = f"audit sink failed: {type(exc).__name__}"
                self.ready = False
                for _, fut in batch + self._pending:
                    if not fut.done():
                        fut.set_exception(AuditUnavailable(self._failed))
                self._pending = []
                return
            self.batches += 1
            self.records += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def checkpoint_body(self) -> dict[str, Any]:
        return {"schema": "ledgergate.audit/v1", "kind": "checkpoint", "tree_size": len(self._leaves),
                "root": base64.b64encode(merkle_root(self._leaves)).decode()}

    async def close(self) -> None:
        if self._closed:
            return
        if self._failed is None and self.ready:
            try:
                await self.commit(self.checkpoint_body())
            except AuditUnavailable:
                pass
        self._closed = True
        if self._flusher is not None:
            await self._flusher
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
