"""Witnesses named by configuration or on the command line, of every kind: a directory, a
PostgreSQL table (audit/postgres.py) or a C2SP tlog-witness over HTTP (audit/checkpoint.py).
Its own module so that the checkpoint format knows nothing of PostgreSQL (no import loop)."""

from __future__ import annotations

from ext_proc.audit.checkpoint import Checkpoint, DirectoryWitness, HttpWitness, load_witness_dir
from ext_proc.audit.postgres import DEFAULT_WITNESS_TABLE, PostgresWitness, load_postgres_witness


def open_witnesses(config) -> list:
    """`audit.witness` as one mapping or a list of them: {dir: PATH}, {dsn: postgresql://...,
    table: NAME} or {url: https://witness.example/prefix, keep: DIR} (a C2SP tlog-witness; its
    cosigned checkpoints are kept in DIR for `audit verify --witness DIR --witness-key VKEY`)."""
    if not config:
        return []
    items = config if isinstance(config, list) else [config]
    out = []
    for item in items:
        if isinstance(item, dict) and "dir" in item:
            out.append(DirectoryWitness(item["dir"]))
        elif isinstance(item, dict) and "url" in item:
            out.append(HttpWitness(item["url"], timeout_s=float(item.get("timeout_s", 5)), keep=item.get("keep")))
        elif isinstance(item, dict) and "dsn" in item:
            out.append(PostgresWitness(item["dsn"], item.get("table", DEFAULT_WITNESS_TABLE)))
        else:
            raise ValueError("audit.witness: each witness needs `dir` (a directory outside the audit store), "
                             "`dsn` (a PostgreSQL server other than the audit store's) or `url` (a C2SP "
                             "tlog-witness)")
    return out


def load_witness(spec: str, table: str | None = None) -> list[Checkpoint]:
    """Every checkpoint a witness holds: a directory or a postgresql:// DSN."""
    if spec.startswith(("postgresql://", "postgres://")):
        return load_postgres_witness(spec, table or DEFAULT_WITNESS_TABLE)
    return load_witness_dir(spec)
