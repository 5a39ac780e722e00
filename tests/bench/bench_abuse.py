"""`make bench-abuse`: can one caller stall the others? (issue 16, "Cost")

Through the real Envoy and `ledgergate up` on loopback: N abusive callers each send, back to
back, a ~3 MB chat body of repeated "123-45-" (text made of near-miss candidates for the card,
SSN and phone rules) while one victim sends a small chat request every 50 ms. Reports the
victim's latency percentiles alone and under abuse, and what the abusers got back (status counts,
their own latency). Two configurations: the default inspection budget (the abusive bodies are
refused with a 413 once their candidate budget is spent) and, with --unbounded, a budget large
enough that every abusive body is classified in full.

Bounded in time and sent only to 127.0.0.1. Target: victim p99 under 50 ms with four abusers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support import start_stack  # noqa: E402


def pct(xs: list[float], p: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 1) if xs else None


async def victim(url: str, token: str, stop: asyncio.Event, interval: float) -> tuple[list[float], dict]:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello, a small request"}]}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60) as c:
        while not stop.is_set():
            t = time.perf_counter()
            r = await c.post(url, json=body)
            lat.append((time.perf_counter() - t) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))
    return lat, statuses


async def abuser(url: str, token: str, stop: asyncio.Event, payload: bytes) -> tuple[list[float], dict]:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                                 timeout=120) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = await c.post(url, content=payload)
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            lat.append((time.perf_counter() - t) * 1000)
            statuses[code] = statuses.get(code, 0) + 1
    return lat, statuses


def _abuse_process(url: str, token: str, payload: bytes, n: int, duration: float, out) -> None:
    """The abusers, in their own process: the victim's latency is not the load generator's."""
    async def go() -> list:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(abuser(url, token, stop, payload)) for _ in range(n)]
        await asyncio.sleep(duration)
        stop.set()
        return await asyncio.gather(*tasks)
    out.put(asyncio.run(go()))


async def scenario(url: str, token: str, *, abusers: int, payload: bytes, duration: float,
                   interval: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = None
    if abusers:
        proc = ctx.Process(target=_abuse_process, args=(url, token, payload, abusers, duration + 2.0, queue))
        proc.start()
        await asyncio.sleep(2.0)       # the abusers are in flight before the victim starts
    stop = asyncio.Event()
    v = asyncio.create_task(victim(url, token, stop, interval))
    await asyncio.sleep(duration)
    stop.set()
    lat, statuses = await v
    abuse = []
    if proc is not None:
        abuse = await asyncio.to_thread(queue.get, True, 180)
        proc.join(30)
    ab_lat = [x for a in abuse for x in a[0]]
    ab_status: dict[int, int] = {}
    for a in abuse:
        for k, n in a[1].items():
            ab_status[k] = ab_status.get(k, 0) + n
    return {"abusers": abusers, "victim": {"requests": len(lat), "statuses": statuses, "p50_ms": pct(lat, 50),
                                           "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100)},
            "abuse": {"requests": len(ab_lat), "statuses": ab_status, "p50_ms": pct(ab_lat, 50),
                      "max_ms": pct(ab_lat, 100)}}


def run(args: argparse.Namespace) -> dict:
    reps = int(args.body_mb * 1_000_000) // len(args.unit)
    # By default six messages of ~500 KB: each under the classifier's per-text limit (1 Mi
    # characters), so every one is scanned, as a caller who knows the limits would send them.
    per = reps // args.messages
    payload = json.dumps({"model": "gpt-4o-mini",
                          "messages": [{"role": "user", "content": args.unit * per} for _ in range(args.messages)]}).encode()
    out: dict = {"body_bytes": len(payload), "unit": args.unit, "duration_s": args.duration, "configs": {}}
    configs = {"default budget": {}}
    if args.unbounded:
        configs["budget large enough to classify every body in full"] = {
            "limits": {"max_inspection_bytes": 64 << 20, "max_inspection_candidates": 10 ** 9}}
    for name, cfg in configs.items():
        with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
            extra: list[str] = []
            if cfg:
                p = Path(tmp) / "ledgergate.yaml"
                p.write_text(json.dumps(cfg))
                extra = ["--config", str(p)]
            stack = start_stack(Path(tmp), *extra)
            try:
                url = f"{stack.base_url}/v1/chat/completions"
                token = stack.token()
                results = []
                for n in (0, args.abusers):
                    r = asyncio.run(scenario(url, token, abusers=n, payload=payload, duration=args.duration,
                                             interval=args.interval))
                    print(name, json.dumps(r), flush=True)
                    results.append(r)
                out["configs"][name] = results
            finally:
                stack.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--abusers", type=int, default=4)
    ap.add_argument("--body-mb", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--unbounded", action="store_true", help="also run with a budget that never runs out")
    ap.add_argument("--unit", default="123-45-", help="the text repeated in the abusive bodies "
                    "(e.g. 'hello w' for a benign body of the same size)")
    ap.add_argument("--messages", type=int, default=6, help="messages the body is split into")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not 0 <= args.abusers <= 16 or not 0 < args.duration <= 120 or not 0 < args.body_mb <= 3.9 \
            or not 1 <= args.messages <= 100_000:
        ap.error("bounded: 0-16 abusers, duration up to 120 s, bodies up to 3.9 MB (Envoy's buffer is 4 MiB)")
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
