"""Where a cache hit's time goes, in one process, without Envoy: the real Servicer.Process is
driven with the two ext_proc messages Envoy sends for a hit (request headers, request body; the
reply to the body is the immediate response), on the real Runtime (dev JWT issuer, the e2e cache
policy, the file audit sink with its fsync, Redis or the in-process store).

Process CPU time per hit (all threads: the loop and the audit writer) and call counts are what to
compare on a shared machine. --phases wraps the steps of a hit (the two messages, identity, the
decision, the key, the store GET, the response inspection of the cached answer, the records,
sealing, the durable commit, the immediate response; the writer thread's write + fsync) and
prints the event loop's CPU (thread time) and the wall time of each per hit. Usage:
  .venv/bin/python tests/bench/bench_hit_cpu.py [--hits 300] [--backend redis|memory]
      [--phases] [--profile FILE.pstats] [--top 40]
Only 127.0.0.1 is contacted; the Redis keys use a unique prefix and are deleted at the end.

Instruction counts (noise-free on a shared machine): under callgrind with LG_CALLGRIND=1 only the
measured hits are instrumented, and the Redis deadline is raised to 60 s (valgrind is ~50x slower):
  PYTHONHASHSEED=0 LG_CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no \
      .venv/bin/python tests/bench/bench_hit_cpu.py --hits 100
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from ext_proc.cli.devmaterial import ensure_dev_material  # noqa: E402
from ext_proc.identity.dev import mint_dev_token  # noqa: E402
from ext_proc.server.config import load_config  # noqa: E402
from ext_proc.server.runtime import Runtime  # noqa: E402
from ext_proc.server.servicer import Servicer  # noqa: E402
from tests.bench.bench_cache import body  # noqa: E402
from tests.bench.bench_exchange import _callgrind  # noqa: E402

ANSWER = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "You said: " + "figures " * 60},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 80, "completion_tokens": 70, "total_tokens": 150}}).encode()


class Ctx:
    def invocation_metadata(self) -> tuple:
        return ()

    async def abort(self, code, details):
        raise RuntimeError(f"aborted: {code} {details}")


def _headers(pairs: dict[str, str], end: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]), end_of_stream=end)


def request_messages(token: str, request_id: str, payload: bytes) -> list[pb.ProcessingRequest]:
    attrs = struct_pb2.Struct()
    attrs.update({"request.id": request_id})
    head = pb.ProcessingRequest(request_headers=_headers({
        ":method": "POST", ":path": "/v1/chat/completions", ":authority": "127.0.0.1", ":scheme": "http",
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "content-length": str(len(payload)), "x-request-id": request_id, "user-agent": "bench"}))
    head.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return [head, pb.ProcessingRequest(request_body=pb.HttpBody(body=payload, end_of_stream=True))]


def response_messages() -> list[pb.ProcessingRequest]:
    return [pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=ANSWER, end_of_stream=True))]


async def drive(servicer: Servicer, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async def it():
        for m in messages:
            yield m
    return [r async for r in servicer.Process(it(), Ctx())]


# --- per-step CPU and wall (--phases) ----------------------------------------------------------
STEPS: dict[str, list[float]] = {}     # name -> [thread CPU seconds, wall seconds, calls]


def _add(name: str, cpu: float, wall: float) -> None:
    a = STEPS.setdefault(name, [0.0, 0.0, 0])
    a[0] += cpu
    a[1] += wall
    a[2] += 1


def _wrap(owner, attr: str, name: str) -> None:
    f = getattr(owner, attr)
    if asyncio.iscoroutinefunction(f):
        @functools.wraps(f)
        async def aw(*a, **k):
            c, t = time.thread_time(), time.perf_counter()
            try:
                return await f(*a, **k)
            finally:
                _add(name, time.thread_time() - c, time.perf_counter() - t)
        setattr(owner, attr, aw)
    else:
        @functools.wraps(f)
        def w(*a, **k):
            c, t = time.thread_time(), time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                _add(name, time.thread_time() - c, time.perf_counter() - t)
        setattr(owner, attr, w)


def instrument() -> None:
    """Wrap the steps of a hit where the server looks them up (module globals and classes)."""
    from ext_proc.audit import chain, log
    from ext_proc.cache import store
    from ext_proc.identity import resolver
    from ext_proc.server import decide, exchange, replies, response_cache
    from ext_proc.server import runtime as runtime_mod
    from ext_proc.streaming import inspector
    for owner, attr, name in [
        (exchange.Exchange, "on_request_headers", "1 request headers message (whole)"),
        (resolver.IdentityResolver, "resolve", "1a identity (JWT verification)"),
        (exchange.Exchange, "on_request_body", "2 request body message (whole)"),
        (exchange, "decide", "2a request decision (server/decide.py)"),
        (decide, "decide_request", "2a1 pipeline decide_request"),
        (runtime_mod.Runtime, "reserve", "2a2 rate-limit reserve"),
        (response_cache, "answer_from_cache", "2b cache (answer_from_cache, whole)"),
        (response_cache, "_plan", "2b1 cacheability and key"),
        (store.RedisStore, "get", "2b2 store GET"),
        (store.MemoryStore, "get", "2b2 store GET"),
        (response_cache, "replay_stream", "2b3 stream replay"),
        (inspector.ResponseInspector, "__init__", "2b4 response inspection: inspector set-up"),
        (inspector.ResponseInspector, "feed", "2b4 response inspection: feed"),
        (inspector.ResponseInspector, "outcome", "2b4 response inspection: summary"),
        (response_cache, "cache_hit", "2b5 the two records built"),
        (runtime_mod.Runtime, "release", "2b6 rate-limit release"),
        (log.AuditLog, "commit_together", "2b7 commit_together (seal + wait until durable)"),
        (log.AuditLog, "begin_together", "2b7b begin_together (seal + queue; the wait is in the cache step)"),
        (chain.ChainWriter, "seal_line", "2b7a seal one record (canonical JSON, hash, signature)"),
        (replies, "immediate", "2b8 immediate response built"),
        (log.FileSink, "write_batch", "W  writer thread: write + fsync"),
    ]:
        if hasattr(owner, attr):
            _wrap(owner, attr, name)


def phase_sums(rt: Runtime) -> dict[str, tuple[float, float]]:
    out: dict[str, list[float]] = {}
    for metric in rt.metrics.phase_seconds.collect():
        for s in metric.samples:
            if s.name.endswith("_sum") or s.name.endswith("_count"):
                out.setdefault(s.labels["phase"], [0.0, 0.0])[0 if s.name.endswith("_sum") else 1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


async def run(tmp: Path, hits: int, backend: str, profile: Path | None, top: int) -> dict:
    var = tmp / "var"
    ensure_dev_material(var)
    prefix = f"lg:bench-hit-cpu:{uuid.uuid4().hex[:8]}:"
    config = load_config(None, base_dir=tmp, overrides={
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
        "server": {"metrics_listen": None},
        "cache": {"backend": backend, "prefix": prefix}})
    if os.environ.get("LG_CALLGRIND") == "1":
        from ext_proc.cache.store import RedisStore
        RedisStore.__init__.__kwdefaults__["timeout_s"] = 60.0
    rt = Runtime(config)
    await rt.start()
    servicer = Servicer(rt)
    token = mint_dev_token(var / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())
    payload = body("fixed")
    try:
        filled = await drive(servicer, request_messages(token, "fill", payload) + response_messages())
        assert len(filled) == 4, filled
        await asyncio.gather(*rt.cache._fills)

        async def hit(i: int) -> None:
            out = await drive(servicer, request_messages(token, f"hit-{i}", payload))
            assert len(out) == 2 and out[1].HasField("immediate_response"), out
            assert out[1].immediate_response.status.code == 200
        for i in range(50):                       # warm up
            await hit(i)
        before = phase_sums(rt)
        STEPS.clear()
        batches0 = rt.audit.batches
        wall, cpu0, w0, t0 = [], time.process_time(), time.perf_counter(), time.thread_time()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        _callgrind(True)
        for i in range(hits):
            t = time.perf_counter()
            await hit(1000 + i)
            wall.append(time.perf_counter() - t)
        _callgrind(False)
        if prof:
            prof.disable()
        cpu, elapsed, loop_cpu = time.process_time() - cpu0, time.perf_counter() - w0, time.thread_time() - t0
        after = phase_sums(rt)
        res: dict = {"backend": backend, "hits": hits,
                     "cpu_ms_per_hit": round(1000 * cpu / hits, 3),
                     "wall_p50_ms": round(1000 * statistics.median(wall), 3),
                     "wall_mean_ms": round(1000 * elapsed / hits, 3),
                     "loop_thread_cpu_ms_per_hit": round(1000 * loop_cpu / hits, 3),
                     "durable_writes_per_hit": round((rt.audit.batches - batches0) / hits, 3),
                     "phases_mean_ms": {k: round(1000 * (after[k][0] - before.get(k, (0, 0))[0])
                                                 / (after[k][1] - before.get(k, (0, 0))[1]), 3)
                                        for k in after if after[k][1] > before.get(k, (0, 0))[1]}}
        if STEPS:
            res["steps_per_hit"] = {k: {"calls": round(v[2] / hits, 2), "loop_cpu_ms": round(1000 * v[0] / hits, 3),
                                        "wall_ms": round(1000 * v[1] / hits, 3)} for k, v in sorted(STEPS.items())}
        if prof:
            prof.dump_stats(str(profile))
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
            res["profile_top"] = s.getvalue()
        return res
    finally:
        await rt.close()
        if backend == "redis":
            import redis
            r = redis.Redis(host="127.0.0.1", port=6379)
            doomed = list(r.scan_iter(match=prefix + "*"))
            if doomed:
                r.delete(*doomed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hits", type=int, default=300)
    ap.add_argument("--backend", choices=["redis", "memory"], default="redis")
    ap.add_argument("--phases", action="store_true", help="CPU and wall time of each step of a hit")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    if args.phases:
        instrument()
    with tempfile.TemporaryDirectory() as d:
        res = asyncio.run(run(Path(d), args.hits, args.backend, args.profile, args.top))
    top = res.pop("profile_top", None)
    print(json.dumps(res, indent=1))
    if top:
        print(top)


if __name__ == "__main__":
    main()
