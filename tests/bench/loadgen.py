"""A small asyncio HTTP/1.1 load generator for loopback benchmarks: keep-alive connections,
closed-loop (max throughput at a concurrency) and open-loop (fixed offered rate) modes, and
time to first body byte and to first content token for streamed responses. Bounded by request
count and duration."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    elapsed_s: float = 0.0
    offered_rps: float | None = None

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        def pct(p: float, xs: list[float]) -> float | None:
            if not xs:
                return None
            return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 3)
        ttfb = sorted(self.ttfb_ms)
        ttft = sorted(self.ttft_ms)
        ok = sum(v for k, v in self.statuses.items() if 200 <= k < 300)
        return {
            "requests": len(lat), "ok": ok, "errors": self.errors, "statuses": self.statuses,
            "throughput_rps": round(len(lat) / self.elapsed_s, 1) if self.elapsed_s else None,
            "offered_rps": self.offered_rps,
            "p50_ms": pct(50, lat), "p90_ms": pct(90, lat), "p99_ms": pct(99, lat),
            "mean_ms": round(statistics.fmean(lat), 3) if lat else None,
            "ttfb_p50_ms": pct(50, ttfb), "ttfb_p99_ms": pct(99, ttfb),
            "ttft_p50_ms": pct(50, ttft), "ttft_p99_ms": pct(99, ttft),
        }


# The first non-empty text delta of an OpenAI chat stream (the role chunk carries no text).
FIRST_TOKEN = re.compile(rb'"content":"[^"]')


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, float, float]:
        """Send one request; return (status, time to first body byte, total) in seconds; the time
        to the first content token of a stream is left in `self.ttft`."""
        self.ttft = None
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        t0 = time.perf_counter()
        self.writer.write(raw)
        r = self.reader
        status_line = await r.readline()
        if not status_line:
            self.writer = None
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while True:
            line = await r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
            elif k == "connection" and "close" in v.lower():
                close = True
        ttfb = None
        if chunked:
            while True:
                size = int((await r.readline()).split(b";")[0], 16)
                if ttfb is None:
                    ttfb = time.perf_counter() - t0
                if size == 0:
                    await r.readline()
                    break
                data = await r.readexactly(size + 2)
                if self.ttft is None and FIRST_TOKEN.search(data):
                    self.ttft = time.perf_counter() - t0
        elif length:
            await r.readexactly(length)
            ttfb = time.perf_counter() - t0
        total = time.perf_counter() - t0
        if close:
            self.writer.close()
            self.writer = None
        return status, (ttfb if ttfb is not None else total), total


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
             f"content-length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(port: int, raw: bytes, *, concurrency: int, duration_s: float, max_requests: int) -> Result:
    res = Result()
    stop_at = time.perf_counter() + duration_s
    count = 0

    async def worker() -> None:
        nonlocal count
        c = Conn("127.0.0.1", port)
        while time.perf_counter() < stop_at and count < max_requests:
            count += 1
            try:
                st, ttfb, total = await c.request(raw)
                res.statuses[st] = res.statuses.get(st, 0) + 1
                res.latencies_ms.append(total * 1000)
                res.ttfb_ms.append(ttfb * 1000)
                if c.ttft is not None:
                    res.ttft_ms.append(c.ttft * 1000)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                res.errors += 1
                c = Conn("127.0.0.1", port)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.elapsed_s = time.perf_counter() - t0
    return res


async def open_loop(port: int, raw: bytes, *, rate: float, duration_s: float, max_in_flight: int = 256) -> Result:
    """Start requests on a fixed schedule (not waiting for answers), so queueing shows in latency."""
    res = Result(offered_rps=rate)
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(max_in_flight):
        pool.put_nowait(Conn("127.0.0.1", port))
    tasks = []
    n = int(rate * duration_s)
    t0 = time.perf_counter()

    async def one(scheduled: float) -> None:
        c = await pool.get()
        try:
            st, ttfb, total = await c.request(raw)
            done = time.perf_counter()
            res.statuses[st] = res.statuses.get(st, 0) + 1
            # Latency from the scheduled start, so a stalled generator is not flattering.
            res.latencies_ms.append((done - scheduled) * 1000)
            res.ttfb_ms.append(ttfb * 1000)
            if c.ttft is not None:
                res.ttft_ms.append(c.ttft * 1000)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            res.errors += 1
            c = Conn("127.0.0.1", port)
        finally:
            pool.put_nowait(c)

    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    res.elapsed_s = time.perf_counter() - t0
    return res
