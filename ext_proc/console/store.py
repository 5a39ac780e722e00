"""Where the records are read from: the file sink's segment files or the PostgreSQL table. Read
only: files are opened for reading, the database connection is set read-only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ext_proc.console.evidence import read_pg_segments, split_torn


def is_dsn(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class SegmentFile:
    name: str
    size: int
    mtime_ns: int
    inode: int
    head_sha256: str   # of the first 4 KiB: a rewritten file is re-indexed, not appended to


class FileStore:
    kind = "file"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.label = str(self.directory)
        self.spec = (str(self.directory), "ledgergate_audit")   # open_store's arguments, for a child process

    def segments(self) -> list[SegmentFile]:
        out = []
        for f in sorted(self.directory.glob("*.jsonl")):
            st = f.stat()
            with open(f, "rb") as fh:
                head = fh.read(4096)
            out.append(SegmentFile(f.name, st.st_size, st.st_mtime_ns, st.st_ino,
                                   hashlib.sha256(head).hexdigest()))
        return out

    def read_from(self, name: str, offset: int, size: int = -1) -> bytes:
        with open(self._path(name), "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def read_at(self, name: str, offset: int, length: int) -> bytes:
        with open(self._path(name), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def segment_lines(self, name: str) -> list[bytes]:
        return split_torn(self._path(name).read_bytes())[0]

    def parsed(self) -> list[tuple[str, list[bytes], bytes]]:
        out = []
        for f in sorted(self.directory.glob("*.jsonl")):
            lines, torn = split_torn(f.read_bytes())
            out.append((f.name, lines, torn))
        return out

    def fingerprint(self) -> tuple:
        return tuple((s.name, s.size, s.mtime_ns, s.inode) for s in self.segments())

    def _path(self, name: str) -> Path:
        p = (self.directory / name).resolve()
        if p.parent != self.directory or not name.endswith(".jsonl"):
            raise FileNotFoundError(name)
        return p


class PostgresStore:
    """The PostgreSQL sink's table, read with a read-only transaction."""
    kind = "postgres"

    def __init__(self, dsn: str, table: str = "ledgergate_audit") -> None:
        from ext_proc.audit.postgres import _table

        self.dsn = dsn
        self.table = _table(table)
        self.label = f"postgresql table {self.table}"
        self.spec = (dsn, self.table)
        self._names: dict[str, tuple[str, str]] = {}

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, connect_timeout=3, autocommit=True)
        conn.execute("SET default_transaction_read_only = on")
        return conn

    def _segments(self, conn) -> dict[str, tuple[str, str, int]]:
        """name -> (writer_id, segment_id, last seq); one pass over the primary key."""
        out = {}
        for writer, segment, last in conn.execute(
                f"SELECT writer_id, segment_id, max(seq) FROM {self.table} GROUP BY writer_id, segment_id"):
            out[f"{writer}-{segment}"] = (writer, segment, last)
        self._names = {n: (w, s) for n, (w, s, _l) in out.items()}
        return out

    def rows_after(self, watermarks: dict[str, int]) -> Iterator[tuple[str, int, bytes]]:
        """(segment name, seq, record line) for every row past its segment's watermark, in order;
        each segment read by its primary key from where the index stopped."""
        with self._connect() as conn:
            for name, (writer, segment, last) in self._segments(conn).items():
                mark = watermarks.get(name, -1)
                if last <= mark:
                    continue
                for seq, record in conn.execute(
                        f"SELECT seq, record FROM {self.table} WHERE writer_id = %s AND segment_id = %s "
                        "AND seq > %s ORDER BY seq", (writer, segment, mark)):
                    yield name, seq, record.encode()

    def read_record(self, name: str, seq: int) -> bytes:
        with self._connect() as conn:
            if name not in self._names:
                self._segments(conn)
            if name not in self._names:
                raise FileNotFoundError(f"{name}:{seq}")
            writer, segment = self._names[name]
            row = conn.execute(f"SELECT record FROM {self.table} WHERE writer_id = %s AND segment_id = %s "
                               "AND seq = %s", (writer, segment, seq)).fetchone()
        if row is None:
            raise FileNotFoundError(f"{name}:{seq}")
        return row[0].encode()

    def segment_lines(self, name: str) -> list[bytes]:
        for n, lines, _t in self.parsed():
            if n == name:
                return lines
        return []

    def parsed(self) -> list[tuple[str, list[bytes], bytes]]:
        return read_pg_segments(self.dsn, self.table)

    def fingerprint(self) -> tuple:
        with self._connect() as conn:
            return tuple(conn.execute(f"SELECT count(*), max(seq) FROM {self.table}").fetchone())


def open_store(store: str, table: str = "ledgergate_audit"):
    if is_dsn(store):
        return PostgresStore(store, table)
    if not os.path.isdir(store):
        raise SystemExit(f"console: audit store {store!r} is not a directory or a postgresql:// DSN")
    return FileStore(store)
