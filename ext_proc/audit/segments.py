"""Audit segments as the verifier reads them, wherever they are stored: a file of the file sink
(read in chunks, its torn tail found from the end) or lines from PostgreSQL. Plain data and file
reads only, so the store modules and the verifier can all use it without importing each other."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_BYTES = 2 * 1024 * 1024
"""A file chunk: large enough to amortise a task, small enough that chunks in flight stay a few MB."""

_MAX_CHUNK = 4_000
"""Lines per chunk for sources given as lines (PostgreSQL pages, lists)."""


@dataclass
class Segment:
    """One segment as the verifier reads it: its first line (the genesis), its chunks of complete
    lines in order, and a torn partial final line (files only). `count` returns the number of
    complete lines (needed only to build a consistency proof)."""
    name: str
    first_line: bytes | None
    chunks: Callable[[], Iterator[tuple[Any, ...]]]
    torn: bytes = b""
    torn_offset: int = 0
    size_bytes: int = 0
    count: Callable[[], int] | None = None


def _file_segment(path: Path) -> Segment:
    size = path.stat().st_size
    with open(path, "rb") as f:
        # The torn tail: bytes after the last newline (read backwards in blocks, never the whole file).
        end, pos = size, size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                end = pos - step + i + 1
                break
            pos -= step
        else:
            end = 0
        f.seek(end)
        torn = f.read(size - end)
        f.seek(0)
        first = f.readline().rstrip(b"\n") if end else None

    def chunks() -> Iterator[tuple[Any, ...]]:
        with open(path, "rb") as fh:
            start = 0
            while start < end:
                stop = start + CHUNK_BYTES
                if stop >= end:
                    stop = end
                else:
                    fh.seek(stop)
                    while True:
                        block = fh.read(65536)
                        i = block.find(b"\n")
                        if i >= 0:
                            stop += i + 1
                            break
                        stop += len(block)
                yield ("file", str(path), start, stop)
                start = stop

    def count() -> int:
        n = 0
        with open(path, "rb") as fh:
            left = end
            while left > 0:
                block = fh.read(min(1 << 20, left))
                n += block.count(b"\n")
                left -= len(block)
        return n

    return Segment(path.name, first, chunks, torn, end, size, count)


def lines_segment(name: str, lines: list[bytes], torn: bytes = b"") -> Segment:
    def chunks() -> Iterator[tuple[Any, ...]]:
        for i in range(0, len(lines), _MAX_CHUNK):
            yield ("lines", lines[i:i + _MAX_CHUNK])
    return Segment(name, lines[0] if lines else None, chunks, torn, sum(len(x) + 1 for x in lines),
                   sum(len(x) + 1 for x in lines), lambda: len(lines))


def file_segments(directory: str | Path) -> list[Segment]:
    return [_file_segment(f) for f in sorted(Path(directory).glob("*.jsonl"))]


class StoreNotFound(Exception):
    """The store named does not exist (a missing directory, an unreachable database or table)."""


def is_dsn(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://"))
