"""PostgreSQL sink for shared deployments: an append-only table (a trigger rejects UPDATE, DELETE
and TRUNCATE), one transaction per batch. The writer's role should hold only INSERT and SELECT;
`ROLE_SQL` shows the grants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg

from ext_proc.audit.config import DEFAULT_TABLE, DEFAULT_WITNESS_TABLE
from ext_proc.audit.segments import Segment, StoreNotFound

# A table whose rows can only be added: the same triggers for the audit records and the witness's
# checkpoints (UPDATE, DELETE and TRUNCATE raise).
APPEND_ONLY_SQL = """
CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledgergate {what} are append-only';
END $$;
DROP TRIGGER IF EXISTS {table}_no_change ON {table};
CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION {table}_append_only();
DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
  FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only();
"""

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS {table} (
    writer_id  text   NOT NULL,
    segment_id text   NOT NULL,
    seq        bigint NOT NULL,
    record     text   NOT NULL,
    request_id text,
    PRIMARY KEY (writer_id, segment_id, seq)
);
CREATE INDEX IF NOT EXISTS {table}_request_id ON {table} (request_id);
{append_only}"""


def schema_sql(table: str) -> str:
    """The audit table, its index and its append-only triggers."""
    return SCHEMA_SQL.format(table=table, append_only=APPEND_ONLY_SQL.format(table=table, what="audit records"))


ROLE_SQL = """
-- The role ledgergate connects as: it can append and read, never change or remove.
CREATE ROLE ledgergate_writer LOGIN;
GRANT INSERT, SELECT ON {table} TO ledgergate_writer;
REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM ledgergate_writer;
"""


def _table(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name[0].isalpha() or len(name) > 48:
        raise ValueError(f"audit table name {name!r} must be a plain identifier")
    return name


class PostgresSink:
    def __init__(self, dsn: str, table: str = DEFAULT_TABLE) -> None:
        self.dsn = dsn
        self.table = _table(table)
        self._conn: psycopg.Connection | None = None
        self.path = None

    def open(self, writer_id: str, segment_id: str) -> None:
        self._conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=3)
        with self._conn.transaction():
            self._conn.execute(schema_sql(self.table))

    def write_batch(self, lines: list[bytes]) -> None:
        assert self._conn is not None
        rows = []
        for line in lines:
            rec = json.loads(line)
            rows.append((rec["writer_id"], rec["segment_id"], rec["seq"], line.rstrip(b"\n").decode(),
                         rec.get("request_id")))
        with self._conn.transaction():
            with self._conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.table} (writer_id, segment_id, seq, record, request_id) "
                                "VALUES (%s, %s, %s, %s, %s)", rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


PAGE_ROWS = 2_000


def stream_segments(dsn: str, table: str = DEFAULT_TABLE) -> list[Any]:
    """The table's segments for the streaming verifier: each segment's rows are read a page at a
    time (keyset on seq), so memory stays bounded whatever the table's size. A missing table or an
    unreachable server raises StoreNotFound."""

    table = _table(table)
    try:
        conn = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StoreNotFound(f"audit store {_redact(dsn)} not reachable ({type(exc).__name__})") from exc
    try:
        # The rows as of now: a live writer's later rows are not read (as a file is read to its
        # size at open), so the count a consistency proof is built for stays true.
        listing = conn.execute(f"SELECT writer_id, segment_id, count(*), sum(octet_length(record)), max(seq) "
                               f"FROM {table} GROUP BY writer_id, segment_id ORDER BY writer_id, segment_id").fetchall()
    except psycopg.errors.UndefinedTable as exc:
        conn.close()
        raise StoreNotFound(f"audit table {table} not found in {_redact(dsn)}") from exc

    def segment(writer: str, seg: str, count: int, size: int, last_seq: int) -> Segment:
        row = conn.execute(f"SELECT record FROM {table} WHERE writer_id = %s AND segment_id = %s "
                           "ORDER BY seq LIMIT 1", (writer, seg)).fetchone()

        def chunks() -> Iterator[tuple[str, list[bytes]]]:
            last = None
            while True:
                rows = conn.execute(
                    f"SELECT seq, record FROM {table} WHERE writer_id = %s AND segment_id = %s AND seq <= %s "
                    + ("AND seq > %s " if last is not None else "") + "ORDER BY seq LIMIT %s",
                    (writer, seg, last_seq, *((last,) if last is not None else ()), PAGE_ROWS)).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                yield ("lines", [r[1].encode() for r in rows])
        return Segment(f"{table}:{writer}-{seg}", row[0].encode() if row else None, chunks,
                       size_bytes=int(size or 0) + count, count=lambda: count)
    return [segment(w, s, int(c), int(b or 0), int(m)) for w, s, c, b, m in listing]


def _redact(dsn: str) -> str:
    """The DSN without a password, for messages."""
    from urllib.parse import urlsplit, urlunsplit
    u = urlsplit(dsn)
    if u.password:
        u = u._replace(netloc=u.netloc.replace(":" + u.password + "@", ":***@"))
    return urlunsplit(u)


def read_segments(dsn: str, table: str = DEFAULT_TABLE) -> list[tuple[str, list[bytes], bytes]]:
    """Every segment's records in sequence order, for verify/show/export."""
    table = _table(table)
    out: dict[tuple[str, str], list[bytes]] = {}
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        for writer, segment, record in conn.execute(
                f"SELECT writer_id, segment_id, record FROM {table} ORDER BY writer_id, segment_id, seq"):
            out.setdefault((writer, segment), []).append(record.encode())
    return [(f"{w}-{s}", lines, b"") for (w, s), lines in out.items()]


# --- A PostgreSQL witness: checkpoints on another server ------------------------------------


WITNESS_SQL = """
CREATE TABLE IF NOT EXISTS {table} (
    origin       text   NOT NULL,
    tree_size    bigint NOT NULL,
    note         text   NOT NULL,
    published_ms bigint NOT NULL,
    PRIMARY KEY (origin, tree_size)
);
{append_only}"""


def witness_sql(table: str) -> str:
    """A witness's checkpoint table and its append-only triggers."""
    return WITNESS_SQL.format(table=table, append_only=APPEND_ONLY_SQL.format(table=table, what="checkpoints"))


class PostgresWitness:
    """Every published checkpoint as a row of an append-only table, on a server the audit store
    does not share (a role with INSERT and SELECT only): unlike the directory witness it keeps
    the whole history, and verify checks all of it."""

    def __init__(self, dsn: str, table: str = DEFAULT_WITNESS_TABLE) -> None:
        self.dsn = dsn
        self.table = _table(table)
        self.name = f"postgres:{_redact(dsn)}/{self.table}"
        self._ready = False

    def publish(self, writer_id: str, segment_id: str, size: int, note: bytes, proofs: Any = None) -> None:
        import time

        from ext_proc.audit.checkpoint import parse_note

        origin = parse_note(note, "published").origin
        with psycopg.connect(self.dsn, connect_timeout=3, autocommit=False) as conn:
            with conn.transaction():
                if not self._ready:
                    conn.execute(witness_sql(self.table))
                conn.execute(f"INSERT INTO {self.table} (origin, tree_size, note, published_ms) "
                             "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (origin, size, note.decode(), int(time.time() * 1000)))
        self._ready = True


def load_postgres_witness(dsn: str, table: str = DEFAULT_WITNESS_TABLE) -> list[Any]:
    from ext_proc.audit.checkpoint import CheckpointError, parse_note

    table = _table(table)
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute(f"SELECT origin, tree_size, note FROM {table} ORDER BY origin, tree_size").fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise CheckpointError(f"witness table {table} not found in {_redact(dsn)}") from exc
    except psycopg.OperationalError as exc:
        raise CheckpointError(f"witness {_redact(dsn)} not reachable ({type(exc).__name__})") from exc
    out = []
    for origin, size, note in rows:
        cp = parse_note(note.encode(), f"{_redact(dsn)}/{table} ({origin} @ {size})")
        if (cp.origin, cp.size) != (origin, size):
            raise CheckpointError(f"{cp.source}: row does not match its note")
        out.append(cp)
    return out
