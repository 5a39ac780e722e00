"""A decision record is stamped with the time the decision was taken, in milliseconds, on the
runtime's clock (found by `make mutation`: `clock() - 1000` for `clock() * 1000` in server/decide.py
passed every test; the record's timestamp is what the audit chain and the console order by)."""

from __future__ import annotations

import time

import pytest

from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import _drive, _exchange

pytestmark = pytest.mark.asyncio


async def test_the_decision_record_is_stamped_with_the_decision_time_in_ms(runtime, token):
    records: list[dict] = []
    commit = runtime.audit.commit

    async def recording_commit(body):
        records.append(body)
        return await commit(body)
    runtime.audit.commit = recording_commit
    before = int(time.time() * 1000)
    replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-time", {}))
    after = int(time.time() * 1000)
    assert ctx.aborted is None
    (decision,) = [r for r in records if r["kind"] == "decision"]
    assert before <= decision["received_ms"] <= decision["decided_ms"] <= after
    assert decision["timestamp_ms"] == decision["decided_ms"]
