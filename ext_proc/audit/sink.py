"""What the audit log writes through: a durable, append-only store of one segment's lines.

Two stores implement it: the file sink (audit/log.py, one JSON-lines file per segment) and
PostgreSQL (audit/postgres.py, an append-only table). The log calls them from its one writer
thread, in this order: `open` once, `write_batch` per batch, `close` once.
"""

from __future__ import annotations

from typing import Protocol


class AuditSink(Protocol):
    def open(self, writer_id: str, segment_id: str) -> None:
        """Start a new segment; fail (raise) when the store cannot take writes."""

    def write_batch(self, lines: list[bytes]) -> None:
        """Append these newline-terminated lines, durably, before returning; all or nothing
        as far as the store allows (a table commits one transaction, a file fsyncs once)."""

    def close(self) -> None:
        """Release the store; safe to call twice and after a failed `open`."""
