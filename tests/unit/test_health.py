"""Readiness (ext_proc/server/health.py): the pure evaluation, the monitor's publishing and audit
reopening with a fake runtime, and the whole server (`serve`) against the real PostgreSQL sink made
unreachable and then reachable again."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.audit.postgres import read_segments
from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.server.app import SERVICE_NAME, serve
from ext_proc.server.config import ConfigError, load_config
from ext_proc.server.health import (
    AUDIT_REOPEN_MAX_DELAY_S,
    HealthFacts,
    Readiness,
    ReadinessMonitor,
    audit_reopen_delay,
    evaluate,
    ready_http_answer,
)
from tests.pg import let_in as _let_in
from tests.pg import lock_out as _lock_out
from tests.pg import writer_role
from tests.support import REPO, free_ports

ALL_GOOD = HealthFacts(policy_loaded=True, identity_ready=True, audit_ready=True, draining=False)


# --- the pure part -------------------------------------------------------------------------------

@pytest.mark.parametrize("change, reasons", [
    ({}, ()),
    ({"draining": True}, ("draining",)),
    ({"policy_loaded": False}, ("policy_not_loaded",)),
    ({"identity_ready": False}, ("identity_not_ready",)),
    ({"audit_ready": False}, ("audit_unavailable",)),
    ({"identity_ready": False, "audit_ready": False}, ("identity_not_ready", "audit_unavailable")),
    ({"draining": True, "policy_loaded": False, "identity_ready": False, "audit_ready": False},
     ("draining", "policy_not_loaded", "identity_not_ready", "audit_unavailable")),
])
def test_readiness_is_serving_only_when_every_fact_is_good(change, reasons):
    facts = HealthFacts(**{**ALL_GOOD.__dict__, **change})
    r = evaluate(facts, 12.5)
    assert r == Readiness(serving=not reasons, reasons=reasons, evaluated_at=12.5)


def test_ready_http_answer_needs_a_fresh_serving_evaluation():
    serving = evaluate(ALL_GOOD, 100.0)
    assert ready_http_answer(serving, 101.0, stale_after_s=3.0) == (200, b"ready\n")
    assert ready_http_answer(serving, 103.0, stale_after_s=3.0)[0] == 200
    status, body = ready_http_answer(serving, 103.5, stale_after_s=3.0)
    assert status == 503 and b"stalled" in body
    status, body = ready_http_answer(evaluate(HealthFacts(True, True, False, False), 100.0), 100.0, 3.0)
    assert status == 503 and body == b"not ready: audit_unavailable\n"
    assert ready_http_answer(None, 0.0, 3.0)[0] == 503


def test_audit_reopen_backs_off_exponentially_up_to_a_cap():
    delays = [audit_reopen_delay(n, 0.5) for n in range(12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays == sorted(delays) and delays[-1] == AUDIT_REOPEN_MAX_DELAY_S
    assert audit_reopen_delay(10_000, 1.0) == AUDIT_REOPEN_MAX_DELAY_S


def test_health_interval_is_configurable_and_validated():
    assert load_config(None).health_interval_s == 1.0
    assert load_config(None, overrides={"server": {"health_interval_s": 0.25}}).health_interval_s == 0.25
    for bad in (0, -1, "soon"):
        with pytest.raises(ConfigError):
            load_config(None, overrides={"server": {"health_interval_s": bad}})


# --- the monitor with a fake runtime -------------------------------------------------------------

@dataclass
class FakeAudit:
    ready: bool = True


@dataclass
class FakeIdentity:
    ready: bool = True


@dataclass
class FakePolicies:
    current: object = "policy"


@dataclass
class FakeRuntime:
    audit: FakeAudit = field(default_factory=FakeAudit)
    identity: FakeIdentity = field(default_factory=FakeIdentity)
    policies: FakePolicies = field(default_factory=FakePolicies)
    sink_up: bool = True
    reopen_calls: int = 0

    async def reopen_audit(self) -> bool:
        self.reopen_calls += 1
        if self.sink_up:
            self.audit = FakeAudit(ready=True)
        return self.sink_up


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _monitor(rt: FakeRuntime, clock: Clock, interval: float = 1.0):
    published: list[bool] = []

    async def publish(serving: bool) -> None:
        published.append(serving)

    return ReadinessMonitor(rt, publish, interval_s=interval, clock=clock), published


async def test_monitor_publishes_changes_only():
    rt, clock = FakeRuntime(), Clock()
    m, published = _monitor(rt, clock)
    await m.check()
    await m.check()
    assert published == [True]
    rt.identity.ready = False
    await m.check()
    await m.check()
    assert published == [True, False] and m.current.reasons == ("identity_not_ready",)
    rt.identity.ready = True
    await m.check()
    assert published == [True, False, True]
    assert m.http_answer() == (200, b"ready\n")
    clock.t += 10  # no evaluation for 10 intervals: /ready says the loop is stuck
    assert m.http_answer()[0] == 503


async def test_monitor_reopens_a_failed_audit_log_with_backoff_and_recovers():
    rt, clock = FakeRuntime(), Clock()
    m, published = _monitor(rt, clock, interval=1.0)
    await m.check()
    rt.audit.ready, rt.sink_up = False, False
    await m.check()
    assert published == [True, False] and rt.reopen_calls == 1
    await m.check()                          # within the 1 s back-off: no new attempt
    assert rt.reopen_calls == 1
    clock.t += 1.0
    await m.check()
    assert rt.reopen_calls == 2              # next back-off 2 s
    clock.t += 1.0
    await m.check()
    assert rt.reopen_calls == 2
    clock.t += 1.0
    rt.sink_up = True
    await m.check()
    assert rt.reopen_calls == 3 and published == [True, False, True] and m.current.serving


async def test_draining_is_not_serving_and_does_not_reopen_the_audit_log():
    rt, clock = FakeRuntime(), Clock()
    m, published = _monitor(rt, clock)
    await m.check()
    rt.audit.ready = False
    await m.drain()
    assert published == [True, False] and m.current.reasons == ("draining", "audit_unavailable")
    assert rt.reopen_calls == 0


async def test_a_check_that_fails_publishes_not_serving():
    class Broken:
        @property
        def ready(self) -> bool:
            raise RuntimeError("boom")

    rt, clock = FakeRuntime(), Clock()
    m, published = _monitor(rt, clock, interval=0.01)
    await m.check()
    rt.identity = Broken()
    task = asyncio.create_task(m.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert published == [True, False] and m.current.reasons == ("health_check_failed",)


# --- the whole server with the real PostgreSQL sink ----------------------------------------------

@pytest.fixture
def pg_writer_role():
    """A role of its own (owner of a schema of the same name, where its audit table goes), so the
    test can lock it out of the database without touching anyone else's connections. PostgreSQL
    down is an error here, never a skip (tests/pg.py)."""
    with writer_role("lg_health") as role:
        yield role


async def _grpc_health(channel: grpc.aio.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {svc: (await stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=2)).status
            for svc in ("", SERVICE_NAME)}


def _http_ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def _wait_for(channel, metrics_port: int, want: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        grpc_status = await _grpc_health(channel)
        http_status = await asyncio.to_thread(_http_ready, metrics_port)
        serving = want == health_pb2.HealthCheckResponse.SERVING
        if set(grpc_status.values()) == {want} and http_status == (200 if serving else 503):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"health {grpc_status}, /ready {http_status}; wanted {want}")
        await asyncio.sleep(0.05)


async def _unauthenticated_request(channel, request_id: str) -> pb.ProcessingResponse:
    """A request without a credential: ledgergate commits a 401 decision record before answering."""
    stub = pb_grpc.ExternalProcessorStub(channel)
    headers = pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in
        {":method": "POST", ":path": "/v1/chat/completions", "x-request-id": request_id}.items()]))
    call = stub.Process()
    await call.write(pb.ProcessingRequest(request_headers=headers))
    reply = await call.read()
    call.cancel()
    return reply


@pytest.mark.postgres
async def test_unreachable_postgres_sink_is_not_serving_until_it_recovers_on_a_new_segment(tmp_path, pg_writer_role):
    role = pg_writer_role
    ensure_dev_material(tmp_path / "var")
    grpc_port, metrics_port = free_ports(2)
    dsn = f"postgresql://{role}@127.0.0.1:5432/test"
    config = load_config(None, base_dir=tmp_path, overrides={
        "server": {"listen": [f"127.0.0.1:{grpc_port}"], "metrics_listen": f"127.0.0.1:{metrics_port}",
                   "health_interval_s": 0.1, "drain_grace_s": 1},
        "policy": {"path": str(REPO / "policies" / "default.yaml")},
        "audit": {"sink": "postgres", "dsn": dsn, "table": "audit_records"}})
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ready=ready, stop=stop))
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await _wait_for(channel, metrics_port, SERVING)
            reply = await _unauthenticated_request(channel, "before-outage")
            assert reply.immediate_response.status.code == 401

            _lock_out(role)
            # The next commit fails: the request is refused (503), and the process stops being ready.
            reply = await _unauthenticated_request(channel, "during-outage")
            assert reply.immediate_response.status.code == 503
            await _wait_for(channel, metrics_port, NOT_SERVING)
            # It stays unready while the sink is unreachable (reopen attempts keep failing).
            await asyncio.sleep(0.5)
            assert set((await _grpc_health(channel)).values()) == {NOT_SERVING}

            _let_in(role)
            await _wait_for(channel, metrics_port, SERVING)
            reply = await _unauthenticated_request(channel, "after-recovery")
            assert reply.immediate_response.status.code == 401
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)

    segments = read_segments(f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{role}",
                             "audit_records")
    assert len(segments) == 2, [s[0] for s in segments]
    records = {}
    for _name, lines, _raw in segments:
        parsed = [json.loads(line) for line in lines]
        records[parsed[0]["segment_id"]] = parsed
    segment_of = {r["request_id"]: seg for seg, recs in records.items() for r in recs if r.get("request_id")}
    failed, fresh = segment_of["before-outage"], segment_of["after-recovery"]
    assert failed != fresh
    assert "during-outage" not in segment_of      # refused, never recorded
    assert records[fresh][0]["kind"] == "genesis"
    assert records[failed][-1]["kind"] != "checkpoint"   # the failed segment did not close cleanly
    assert records[fresh][-1]["kind"] == "checkpoint"    # the new one closed at shutdown


async def test_what_start_built_is_frozen_out_of_the_collectors_way(tmp_path):
    # A full collection under load then walks only what requests left behind (12-14 ms pauses
    # before, at 230 req/s on the 2-core box; under 0.5 ms after).
    ensure_dev_material(tmp_path / "var")
    grpc_port, metrics_port = free_ports(2)
    config = load_config(None, base_dir=tmp_path, overrides={
        "server": {"listen": [f"127.0.0.1:{grpc_port}"], "metrics_listen": f"127.0.0.1:{metrics_port}",
                   "drain_grace_s": 0},
        "policy": {"path": str(REPO / "policies" / "default.yaml")}})
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        assert gc.get_freeze_count() > 10_000
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
        gc.unfreeze()
