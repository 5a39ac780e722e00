"""The local PostgreSQL for tests: an admin connection and a writer role of the test's own.

PostgreSQL being down is an error, never a skip: the audit sink's promises are tested against it
(COMMON rules: real PostgreSQL), and a suite that skips them silently would pass without them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def admin(sql: str, *params) -> list[tuple]:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def writer_role(prefix: str) -> Iterator[str]:
    """A login role that owns a schema of the same name (where its audit table goes), so a test
    can lock it out of the database without touching anyone else's connections."""
    admin("SELECT 1")  # raises psycopg.OperationalError when PostgreSQL is down: the test errors
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin(f"CREATE ROLE {role} LOGIN")
    admin(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
    try:
        yield role
    finally:
        admin(f"ALTER ROLE {role} NOLOGIN")
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", role)
        admin(f"DROP SCHEMA {role} CASCADE")
        admin(f"DROP ROLE {role}")


def lock_out(role: str) -> None:
    """The sink becomes unreachable for this role: no new connections, and the open ones are cut."""
    admin(f"ALTER ROLE {role} NOLOGIN")
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", role)


def let_in(role: str) -> None:
    admin(f"ALTER ROLE {role} LOGIN")


def dsn_for(role: str) -> str:
    return f"postgresql://{role}@127.0.0.1:5432/test"


def read_dsn_for(role: str) -> str:
    """The admin's view of the role's schema (for reading what the sink wrote)."""
    return f"{ADMIN_DSN}?options=-csearch_path%3D{role}"
