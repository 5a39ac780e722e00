"""Witnesses named by configuration or on the command line, of every kind: a directory, a
PostgreSQL table (audit/postgres.py) or a C2SP tlog-witness over HTTP (audit/checkpoint.py).
Its own module so that the checkpoint format knows nothing of PostgreSQL (no import loop)."""

from __future__ import annotations

from collections.abc import Sequence

from ext_proc.audit.checkpoint import Checkpoint, DirectoryWitness, HttpWitness, load_witness_dir
from ext_proc.audit.config import DEFAULT_WITNESS_TABLE, WitnessConfig
from ext_proc.audit.postgres import PostgresWitness, load_postgres_witness

Witness = DirectoryWitness | HttpWitness | PostgresWitness


def open_witnesses(configs: Sequence[WitnessConfig]) -> list[Witness]:
    """`audit.witness` (checked by audit/config.py): a directory, a PostgreSQL table or a C2SP
    tlog-witness over HTTP each (its cosigned checkpoints kept in `keep` for
    `audit verify --witness DIR --witness-key VKEY`)."""
    out: list[Witness] = []
    for w in configs:
        if w.dir is not None:
            out.append(DirectoryWitness(w.dir))
        elif w.url is not None:
            out.append(HttpWitness(w.url, timeout_s=w.timeout_s, keep=w.keep))
        elif w.dsn is not None:
            out.append(PostgresWitness(w.dsn, w.table))
    return out


def load_witness(spec: str, table: str | None = None) -> list[Checkpoint]:
    """Every checkpoint a witness holds: a directory or a postgresql:// DSN."""
    if spec.startswith(("postgresql://", "postgres://")):
        return load_postgres_witness(spec, table or DEFAULT_WITNESS_TABLE)
    return load_witness_dir(spec)
