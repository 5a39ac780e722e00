"""Response cache latency through the real Envoy, three paths in one run, requests interleaved
one at a time (so the busy machine's noise falls on all three alike):

  envoy - Envoy alone (ext_proc filter removed) -> mock provider
  miss  - Envoy + ledgergate, a cacheable request not yet cached (forwarded, then filled)
  hit   - Envoy + ledgergate, the same request again: answered from the cache, no provider

Plus the Redis memory of one entry (MEMORY USAGE). Usage:
  .venv/bin/python tests/bench/bench_cache.py [--requests 300] [--backend redis|memory] [--out FILE]
Only 127.0.0.1 is contacted; the Redis keys use a unique prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.bench_e2e import start_envoy_variant  # noqa: E402
from tests.bench.loadgen import Conn, build_request  # noqa: E402
from tests.support import start_stack  # noqa: E402

PROMPT = ("Summarise the attached quarterly figures for the operations team in three bullet points; "
          "keep it short and neutral. ") * 3


def body(marker: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": f"{PROMPT} [{marker}]"}]}).encode()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


async def measure(envoy_port: int, lg_port: int, token: str, n: int) -> dict[str, list[float]]:
    auth = {"authorization": f"Bearer {token}"}
    envoy, lg = Conn("127.0.0.1", envoy_port), Conn("127.0.0.1", lg_port)
    hit_raw = build_request("/v1/chat/completions", body("fixed"), auth)
    out: dict[str, list[float]] = {"envoy": [], "miss": [], "hit": []}
    status, _, _ = await lg.request(hit_raw)        # fill
    assert status == 200
    await asyncio.sleep(0.2)
    for _ in range(20):                              # warm up every path
        await envoy.request(hit_raw)
        await lg.request(build_request("/v1/chat/completions", body(uuid.uuid4().hex), auth))
        await lg.request(hit_raw)
    for _ in range(n):
        s, _, t = await envoy.request(hit_raw)
        out["envoy"].append(t)
        s2, _, t2 = await lg.request(build_request("/v1/chat/completions", body(uuid.uuid4().hex), auth))
        out["miss"].append(t2)
        s3, _, t3 = await lg.request(hit_raw)
        out["hit"].append(t3)
        assert s == s2 == s3 == 200, (s, s2, s3)
    return out


def phase_totals(metrics_port: int) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per ledgergate_phase_seconds phase, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^ledgergate_phase_seconds_(sum|count)\{phase="([a-z_]+)"\} ([0-9.e+-]+)$', text, re.MULTILINE):
        out.setdefault(m.group(2), [0.0, 0.0])[("sum", "count").index(m.group(1))] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--backend", choices=["redis", "memory"], default="redis")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    prefix = f"lg:bench-cache:{uuid.uuid4().hex[:8]}:"
    r = redis.Redis(host="127.0.0.1", port=6379)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = tmp / "ledgergate.yaml"
        cfg.write_text(json.dumps({
            "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
            "audit": {"sink": "file"},
            "cache": {"backend": args.backend, "prefix": prefix}}))
        stack = start_stack(tmp, "--config", str(cfg))
        envoy_proc = None
        try:
            envoy_proc, envoy_port = start_envoy_variant(tmp, mock_port=stack.mock_port, ext_ports=None)
            phases0 = phase_totals(stack.metrics_port)
            lat = asyncio.run(measure(envoy_port, stack.port, stack.token(), args.requests))
            phases1 = phase_totals(stack.metrics_port)
            keys = list(r.scan_iter(match=prefix + "*")) if args.backend == "redis" else []
            mem = [r.memory_usage(k) for k in keys[:50]]
            value_len = [r.strlen(k) for k in keys[:50]]
        finally:
            if envoy_proc is not None:
                envoy_proc.terminate()
                envoy_proc.wait(10)
            stack.stop()
            doomed = list(r.scan_iter(match=prefix + "*"))
            if doomed:
                r.delete(*doomed)
    res = {name: {"p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
                  "mean_ms": statistics.fmean(xs) * 1000, "n": len(xs)} for name, xs in lat.items()}
    res["backend"] = args.backend
    # The durable commits alone (less exposed to the shared machine's CPU load than end to end):
    # a hit's two records (cache_hit_commit) and a miss's records one by one (audit_commit).
    for phase in ("cache_hit_commit", "audit_commit"):
        (s0, c0), (s1, c1) = phases0.get(phase, (0.0, 0.0)), phases1.get(phase, (0.0, 0.0))
        res[f"{phase}_mean_ms"] = round(1000 * (s1 - s0) / (c1 - c0), 3) if c1 > c0 else None
    res["hit_added_p50_ms_over_envoy"] = res["hit"]["p50_ms"] - res["envoy"]["p50_ms"]
    res["miss_added_p50_ms_over_envoy"] = res["miss"]["p50_ms"] - res["envoy"]["p50_ms"]
    res["hit_over_miss_p50_ratio"] = res["hit"]["p50_ms"] / res["miss"]["p50_ms"]
    res["hit_over_envoy_p50_ratio"] = res["hit"]["p50_ms"] / res["envoy"]["p50_ms"]
    if mem:
        res["redis_entry_bytes_median"] = statistics.median(mem)
        res["redis_value_bytes_median"] = statistics.median(value_len)
        res["redis_entries_sampled"] = len(mem)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
