"""`make bench-ratelimit`: what the rate-limit check adds per request, as the servicer uses it:
one reserve before release (all of a request's limits in one Redis script call) and one settle
after the response. Against the real Redis at 127.0.0.1:6379 and, for comparison, the in-process
backend; sequential and with concurrent callers. Bounded in count; keys under a unique prefix,
deleted afterwards. Writes JSON (--out) and prints a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ext_proc.ratelimit.limits import LimitSpec, MemoryLimiter  # noqa: E402
from ext_proc.ratelimit.redis_backend import RedisLimiter  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def specs(n: int) -> list[LimitSpec]:
    # Budgets far above what the run uses: every call is admitted, as in the common case.
    dims = [("subject",), ("tenant", "model"), ("roles",)]
    return [LimitSpec(id=f"bench-{i}", key=dims[i % 3], requests=10**9, tokens=10**12, window_s=60)
            for i in range(n)]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 3)


async def run_case(limiter, n_limits: int, iterations: int, concurrency: int) -> dict:
    lim = specs(n_limits)
    reserve_ms: list[float] = []
    settle_ms: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        ctx = {"subject": f"user-{i % 50}", "tenant": "acme", "model": "gpt-4o-mini", "roles": ("developer",)}
        async with sem:
            t0 = time.perf_counter()
            adm = await limiter.reserve(f"r{i}", lim, ctx, 1200)
            t1 = time.perf_counter()
            assert adm.admitted and adm.backend_error is None, adm
            await limiter.settle(adm.reservation, 900)
            t2 = time.perf_counter()
        reserve_ms.append((t1 - t0) * 1000)
        settle_ms.append((t2 - t1) * 1000)

    for i in range(50):  # warm up: script load, connection pool
        await one(i)
    reserve_ms.clear()
    settle_ms.clear()
    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(iterations)))
    el = time.perf_counter() - t
    return {"limits": n_limits, "concurrency": concurrency, "iterations": iterations,
            "reserve_p50_ms": pct(reserve_ms, 50), "reserve_p90_ms": pct(reserve_ms, 90),
            "reserve_p99_ms": pct(reserve_ms, 99), "settle_p50_ms": pct(settle_ms, 50),
            "settle_p99_ms": pct(settle_ms, 99), "decisions_per_s": round(iterations / el)}


async def main_async(args: argparse.Namespace) -> dict:
    prefix = f"lg:bench:{uuid.uuid4().hex[:8]}:"
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()}, "cases": []}
    redis_limiter = RedisLimiter(REDIS_URL, prefix=prefix)
    try:
        for backend, limiter in (("memory", MemoryLimiter()), ("redis", redis_limiter)):
            for n_limits in (1, 3):
                for concurrency in (1, 16):
                    case = await run_case(limiter, n_limits, args.iterations, concurrency)
                    case["backend"] = backend
                    results["cases"].append(case)
    finally:
        keys = [k async for k in redis_limiter.client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await redis_limiter.client.delete(*keys)
        await redis_limiter.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    results = asyncio.run(main_async(a))
    print(f"rate-limit check, {results['date']}, {results['machine']['cores']} cores, Python {results['machine']['python']}")
    print("| backend | limits per request | concurrency | reserve p50 / p90 / p99 ms | settle p50 / p99 ms | decisions/s |")
    print("|---|---|---|---|---|---|")
    for c in results["cases"]:
        print(f"| {c['backend']} | {c['limits']} | {c['concurrency']} | {c['reserve_p50_ms']} / {c['reserve_p90_ms']} / "
              f"{c['reserve_p99_ms']} | {c['settle_p50_ms']} / {c['settle_p99_ms']} | {c['decisions_per_s']} |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
