"""The PostgreSQL sink against the real server: group commit, append-only enforcement, verify."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import open_audit_log
from ext_proc.audit.postgres import read_segments
from ext_proc.audit.verify import verify_segments

pytestmark = pytest.mark.postgres
DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def table():
    name = f"lg_audit_t{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
        c.execute(f"DROP FUNCTION IF EXISTS {name}_append_only() CASCADE")


def test_records_commit_in_batches_verify_and_cannot_be_changed(table, tmp_path):
    async def go():
        log = open_audit_log(AuditConfig.from_dict({"sink": "postgres", "dsn": DSN, "table": table, "signing_key": str(tmp_path / "k.pem")}), writer_id="pg1")
        await log.start()
        await asyncio.gather(*(log.commit({"kind": "decision", "request_id": f"r{i}"}) for i in range(200)))
        assert log.batches < 200
        await log.close()
    asyncio.run(go())
    segs = read_segments(DSN, table)
    rep = verify_segments(segs)
    assert rep.ok and rep.records == 202
    with psycopg.connect(DSN, autocommit=True) as c:
        for stmt in (f"UPDATE {table} SET record = 'x' WHERE seq = 3", f"DELETE FROM {table} WHERE seq = 3",
                     f"TRUNCATE {table}"):
            with pytest.raises(psycopg.errors.RaiseException):
                c.execute(stmt)
        # Even a superuser that disables the trigger to alter a record is caught by verify.
        c.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_change")
        c.execute(f"UPDATE {table} SET record = replace(record, '\"r7\"', '\"r8\"') WHERE seq = 8")
    rep = verify_segments(read_segments(DSN, table))
    assert not rep.ok and ":9" in rep.problem


def test_unreachable_database_fails_at_start(tmp_path):
    log = open_audit_log(AuditConfig.from_dict({"sink": "postgres", "dsn": "postgresql://postgres@127.0.0.1:1/test", "signing_key": str(tmp_path / "k.pem")}), writer_id="pg2")
    with pytest.raises(psycopg.OperationalError):
        asyncio.run(log.start())


def test_records_committed_together_are_one_transaction_and_verify(table, tmp_path):
    # A cache hit's decision and outcome (issue 22) on the PostgreSQL sink: one batch, one
    # transaction, even with a batch limit of one record.
    async def go():
        log = open_audit_log(AuditConfig.from_dict({**{"sink": "postgres", "dsn": DSN, "table": table}, "signing_key": str(tmp_path / "k.pem")}), writer_id="pg2")
        log.max_batch = 1
        await log.start()
        before = log.batches
        decision, outcome = await log.commit_together([{"kind": "decision", "request_id": "hit"},
                                                       {"kind": "outcome", "request_id": "hit"}])
        assert log.batches == before + 1
        with psycopg.connect(DSN, autocommit=True) as c:
            rows = c.execute(f"SELECT seq FROM {table} WHERE request_id = 'hit' ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == [decision["seq"], outcome["seq"]]
        await log.close()
    asyncio.run(go())
    rep = verify_segments(read_segments(DSN, table))
    assert rep.ok, rep.problem
