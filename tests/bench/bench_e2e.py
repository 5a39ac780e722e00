"""`make bench`: the whole path through the real Envoy on loopback, three ways, in one run:

  envoy  - Envoy alone (ext_proc filter removed) -> mock provider
  empty  - Envoy + an empty ext_proc processor with ledgergate's gRPC setup (the plumbing floor)
  full   - Envoy + ledgergate, full pipeline (JWT verify, classification of a ~4 KB prompt with
           PII, policy, redaction, durable signed audit, streaming response inspection)

Reports max throughput (closed loop), latency at fixed offered loads (open loop), time to first
byte for streams, CPU per request and peak memory per worker. Writes JSON (--out) and a table into
docs/benchmarks.md between the BENCH markers, and a PNG plot when matplotlib is installed.
Every load is bounded in count and time and sent only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.loadgen import build_request, closed_loop, open_loop  # noqa: E402
from tests.support import free_ports, start_stack, wait_port  # noqa: E402

PY = sys.executable


def prompt_4k() -> str:
    para = ("Please summarise the quarterly report for the operations team. Contact jane.doe@example.com "
            "for the figures. The meeting is on Tuesday and the agenda covers logistics, hiring, "
            "and the budget review for the next two quarters. ")
    text = ""
    while len(text) < 4000:
        text += para
    return text[:4096]


# A stream paced like a model's: a 4-character delta every 10 ms (the mock's directives).
PACED = {"x-mock-event-delay-ms": "10", "x-mock-chunk-chars": "4"}


def chat_body(stream: bool, words: int = 200) -> bytes:
    # Streams: a ~200-word prompt, echoed back by the mock as ~200 SSE events (issue 7's benchmark).
    content = prompt_4k() if not stream else " ".join(prompt_4k().split()[:words])
    return json.dumps({"model": "gpt-4o-mini", "stream": stream,
                       "messages": [{"role": "user", "content": content}]}).encode()


def proc_cpu_s(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def proc_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (t / "children").read_text().split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Scenario:
    name: str
    port: int
    processor_pids: list[int]
    envoy_pid: int
    headers: dict[str, str]

    def stop(self) -> None: ...


def start_envoy_variant(tmp: Path, *, mock_port: int, ext_ports: list[int] | None) -> tuple[subprocess.Popen, int]:
    from ext_proc.cli.devmaterial import ensure_tls_cert
    from ext_proc.cli.up import envoy_binary, render_envoy_config

    port, tls_port, admin_port = free_ports(3)
    ensure_tls_cert(tmp / "var" / "dev" / "tls")
    cfg = render_envoy_config(REPO / "envoy" / "local.yaml", port=port, tls_port=tls_port, admin_port=admin_port,
                              ext_proc_ports=ext_ports or [1], mock_port=mock_port, upstreams={}, var_dir=tmp / "var")
    if ext_ports is None:
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    hfs = f["typed_config"]["http_filters"]
                    f["typed_config"]["http_filters"] = [h for h in hfs if h["name"] != "envoy.filters.http.ext_proc"]
    path = tmp / f"envoy-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--concurrency", "2",
                             "--base-id", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.5)
    return proc, port


async def measure(port: int, headers: dict[str, str], *, duration: float, rates: list[float],
                  concurrency: int) -> dict:
    raw = build_request("/v1/chat/completions", chat_body(False), headers)
    raw_stream = build_request("/v1/chat/completions", chat_body(True), headers)
    warm = await closed_loop(port, raw, concurrency=4, duration_s=1.0, max_requests=200)
    maxr = await closed_loop(port, raw, concurrency=concurrency, duration_s=duration, max_requests=100000)
    out = {"max": maxr.summary(), "open": {}, "warmup_requests": len(warm.latencies_ms)}
    for rate in rates:
        r = await open_loop(port, raw, rate=rate, duration_s=duration)
        out["open"][str(rate)] = r.summary()
    s = await open_loop(port, raw_stream, rate=5, duration_s=min(duration, 6))
    out["stream"] = s.summary()
    # The same kind of stream arriving at a model's pace: here the hold-back, not the plumbing,
    # decides how long the first token waits.
    raw_paced = build_request("/v1/chat/completions", chat_body(True, words=40), {**headers, **PACED})
    out["paced_stream"] = (await open_loop(port, raw_paced, rate=4, duration_s=4)).summary()
    return out


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    mock_port = free_ports(1)[0]
    mock = subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mock_port)
    results: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "cpu": _cpu_model()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "duration_s": args.duration, "concurrency": args.concurrency, "scenarios": {}}
    try:
        # Full pipeline first: its max rate sets the offered loads for all three.
        up_stream = [f"--upstream={n}=http://127.0.0.1:{mock_port}" for n in ("openai", "anthropic", "gemini", "bedrock")]
        stack = start_stack(tmp / "full", *up_stream, workers=args.workers)
        token = stack.token(sub="bench", roles="developer", tenant="acme")
        headers = {"authorization": f"Bearer {token}"}
        workers = [p for p in children(stack.proc.pid) if "serve" in cmdline(p)]
        envoy_pids = [p for p in children(stack.proc.pid) if "envoy" in cmdline(p)]
        rates = asyncio.run(_calibrate(stack.port, headers, args))
        # CPU is read around exactly the requests counted (the calibration run is outside).
        cpu0 = {p: proc_cpu_s(p) for p in workers + envoy_pids}
        full = asyncio.run(measure(stack.port, headers, duration=args.duration, rates=rates,
                                   concurrency=args.concurrency))
        full["rates"] = rates
        cpu1 = {p: proc_cpu_s(p) for p in workers + envoy_pids}
        total_requests = _requests(full)
        full["cpu_ms_per_request_ledgergate"] = round(
            1000 * sum(cpu1[p] - cpu0[p] for p in workers) / max(1, total_requests), 3)
        full["peak_rss_mb_per_worker"] = [round(proc_hwm_mb(p) or 0, 1) for p in workers]
        stack.stop()
        results["scenarios"]["full"] = full
        rates = full["rates"]

        proc, port = start_envoy_variant(tmp / "envoy", mock_port=mock_port, ext_ports=None)
        results["scenarios"]["envoy"] = asyncio.run(measure(port, {}, duration=args.duration, rates=rates,
                                                            concurrency=args.concurrency))
        proc.terminate()
        proc.wait(10)

        ep = free_ports(args.workers)
        empties = [subprocess.Popen([PY, str(REPO / "tests" / "bench" / "empty_processor.py"), "--port", str(p)])
                   for p in ep]
        for p in ep:
            wait_port(p)
        proc, port = start_envoy_variant(tmp / "empty", mock_port=mock_port, ext_ports=ep)
        cpu0 = {e.pid: proc_cpu_s(e.pid) for e in empties}
        empty = asyncio.run(measure(port, {}, duration=args.duration, rates=rates, concurrency=args.concurrency))
        n = _requests(empty)
        empty["cpu_ms_per_request_processor"] = round(
            1000 * sum(proc_cpu_s(e.pid) - cpu0[e.pid] for e in empties) / max(1, n), 3)
        results["scenarios"]["empty"] = empty
        proc.terminate()
        proc.wait(10)
        for e in empties:
            e.terminate()
            e.wait(10)
    finally:
        mock.terminate()
        mock.wait(10)
    results["derived"] = derive(results)
    return results


async def _calibrate(port: int, headers: dict[str, str], args: argparse.Namespace) -> list[float]:
    """The full pipeline's max rate sets the offered loads (a quarter, half, three quarters)."""
    raw = build_request("/v1/chat/completions", chat_body(False), headers)
    await closed_loop(port, raw, concurrency=4, duration_s=1.0, max_requests=200)
    maxr = await closed_loop(port, raw, concurrency=args.concurrency, duration_s=args.duration, max_requests=100000)
    m = maxr.summary()["throughput_rps"] or 1
    return [round(m * f, 1) for f in (0.25, 0.5, 0.75)]


def _requests(scenario: dict) -> int:
    return (scenario["warmup_requests"] + scenario["max"]["requests"]
            + sum(v["requests"] for v in scenario["open"].values()) + scenario["stream"]["requests"]
            + scenario["paced_stream"]["requests"])


def derive(results: dict) -> dict:
    sc = results["scenarios"]
    full, empty, envoy = sc["full"], sc["empty"], sc["envoy"]
    half = str(full["rates"][1])
    d = {
        "full_vs_empty_throughput": round(full["max"]["throughput_rps"] / empty["max"]["throughput_rps"], 3),
        "empty_vs_envoy_throughput": round(empty["max"]["throughput_rps"] / envoy["max"]["throughput_rps"], 3),
        "half_rate_rps": float(half),
        "added_p50_ms_at_half_rate": round(full["open"][half]["p50_ms"] - envoy["open"][half]["p50_ms"], 3),
        "added_p99_ms_at_half_rate": round(full["open"][half]["p99_ms"] - envoy["open"][half]["p99_ms"], 3),
        "added_ttfb_p50_ms_stream": round(full["stream"]["ttfb_p50_ms"] - envoy["stream"]["ttfb_p50_ms"], 3),
        "added_ttft_p50_ms_stream": round(full["stream"]["ttft_p50_ms"] - envoy["stream"]["ttft_p50_ms"], 3),
        "added_total_p50_ms_stream": round(full["stream"]["p50_ms"] - envoy["stream"]["p50_ms"], 3),
        "added_ttft_p50_ms_paced_stream": round(full["paced_stream"]["ttft_p50_ms"]
                                                - envoy["paced_stream"]["ttft_p50_ms"], 3),
        "peak_rss_mb_per_worker": full.get("peak_rss_mb_per_worker"),
    }
    return d


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_markdown(results: dict, md: Path, png: Path | None) -> None:
    sc, d = results["scenarios"], results["derived"]
    lines = [
        "<!-- BENCH:BEGIN (written by tests/bench/bench_e2e.py; do not edit by hand) -->",
        f"Run {results['date']} on {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}; load generator, Envoy, mock and processors on the same machine; "
        f"{results['duration_s']} s per measurement, closed loop at concurrency {results['concurrency']}.",
        "",
        "| scenario | max req/s | p50 ms @ max | p99 ms @ max | stream TTFB p50 ms | stream TTFT p50 ms "
        "| stream total p50 ms | paced stream TTFT p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("envoy", "empty", "full"):
        s = sc[name]
        lines.append(f"| {name} | {s['max']['throughput_rps']} | {s['max']['p50_ms']} | {s['max']['p99_ms']} | "
                     f"{s['stream']['ttfb_p50_ms']} | {s['stream']['ttft_p50_ms']} | {s['stream']['p50_ms']} | "
                     f"{s['paced_stream']['ttft_p50_ms']} |")
    lines += ["", "Open loop (fixed offered load; latency from the scheduled start):", "",
              "| offered req/s | envoy p50/p99 ms | empty p50/p99 ms | full p50/p99 ms |", "|---|---|---|---|"]
    for rate in sc["full"]["rates"]:
        k = str(rate)
        cells = [f"{sc[n]['open'][k]['p50_ms']} / {sc[n]['open'][k]['p99_ms']}" for n in ("envoy", "empty", "full")]
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    lines += ["", "Derived (same run):", ""] + [f"- {k}: {v}" for k, v in d.items()]
    lines += [f"- ledgergate CPU ms per request: {sc['full'].get('cpu_ms_per_request_ledgergate')}; "
              f"empty processor: {sc['empty'].get('cpu_ms_per_request_processor')}"]
    if png is not None:
        lines += ["", f"![latency against offered load]({png.name})"]
    lines.append("<!-- BENCH:END -->")
    block = "\n".join(lines)
    text = md.read_text() if md.exists() else "# Benchmarks\n\n"
    if "<!-- BENCH:BEGIN" in text:
        head = text.split("<!-- BENCH:BEGIN")[0]
        tail = text.split("<!-- BENCH:END -->", 1)[1] if "<!-- BENCH:END -->" in text else ""
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## End to end (make bench)\n\n" + block + "\n"
    md.write_text(text)


def plot(results: dict, png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sc = results["scenarios"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("envoy", "empty", "full"):
        rates = sorted(float(r) for r in sc[name]["open"])
        ax.plot(rates, [sc[name]["open"][str(r)]["p50_ms"] for r in rates], marker="o", label=f"{name} p50")
        ax.plot(rates, [sc[name]["open"][str(r)]["p99_ms"] for r in rates], marker="x", ls="--", label=f"{name} p99")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("ledgergate: latency against offered load")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    a = p.parse_args()
    results = run(a)
    Path(a.out).write_text(json.dumps(results, indent=2))
    png = Path(a.md).with_name("benchmarks-latency.png")
    write_markdown(results, Path(a.md), png if plot(results, png) else None)
    print(json.dumps(results["derived"], indent=2))


if __name__ == "__main__":
    main()
