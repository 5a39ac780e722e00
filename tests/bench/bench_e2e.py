"""`make bench`: the whole path through the real Envoy on loopback, three ways, in one run:

  envoy  - Envoy alone (ext_proc filter removed) -> a fixed upstream (an Envoy direct_response)
  empty  - Envoy + an empty ext_proc processor with ledgergate's gRPC setup and processing modes
  full   - Envoy + ledgergate, full pipeline (JWT verify, classification of a ~4 KB prompt with
           PII, policy, redaction, durable signed audit, response inspection)

Throughput and latency by wrk (tests/bench/wrk.py: closed loop, then paced at half the full
pipeline's rate), the three paths up at once and alternated in rounds so the shared machine's
drift falls on all of them; per path also Envoy's ext_proc messages per exchange and the
processor's CPU per request (utime + stime from /proc around exactly the requests wrk counted).
Time to first token of streams by the Python client (wrk cannot see it). Writes JSON (--out)
and a table into docs/benchmarks.md between the BENCH markers. Every load is bounded in time and
sent only to 127.0.0.1.
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
from tests.bench.wrk import (ext_proc_counters, messages_per_exchange, run_wrk,  # noqa: E402
                             start_fixed_upstream, start_front_envoy)
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


def _scenario_pids(name: str, stack, empties) -> list[int]:
    if name == "full":
        return [p for p in children(stack.proc.pid) if "serve" in cmdline(p)]
    if name == "empty":
        return [e.pid for e in empties]
    return []


def wrk_max(port: int, headers: dict[str, str], *, duration: float, connections: int, workers: list[int],
            envoy_pid: int | None, admin_port: int) -> dict:
    """One closed-loop wrk run, with the processor workers' CPU (utime + stime from /proc) and
    Envoy's ext_proc message counters read around exactly the requests wrk counted."""
    body = chat_body(False)
    c0, cpu0 = ext_proc_counters(admin_port), {p: proc_cpu_s(p) for p in workers}
    envoy0 = proc_cpu_s(envoy_pid) if envoy_pid else 0.0
    r = run_wrk(port, body, headers, duration_s=duration, connections=connections)
    c1, cpu1 = ext_proc_counters(admin_port), {p: proc_cpu_s(p) for p in workers}
    r["messages_per_exchange"] = messages_per_exchange(c0, c1, r["requests"])
    worker_cpu = sum(cpu1[p] - cpu0[p] for p in workers)
    if workers:
        r["worker_cpu_ms_per_request"] = round(1000 * worker_cpu / max(1, r["requests"]), 3)
        r["requests_per_worker_cpu_s"] = round(r["requests"] / worker_cpu, 1) if worker_cpu else None
    if envoy_pid:
        r["envoy_cpu_ms_per_request"] = round(1000 * (proc_cpu_s(envoy_pid) - envoy0) / max(1, r["requests"]), 3)
    return r


def _spread(runs: list[dict], key: str) -> dict:
    xs = sorted(x[key] for x in runs if x.get(key) is not None)
    if not xs:
        return {}
    return {"median": xs[len(xs) // 2] if len(xs) % 2 else round((xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2, 3),
            "min": xs[0], "max": xs[-1], "runs": xs}


SCENARIOS = ("envoy", "empty", "full")


def run(args: argparse.Namespace) -> dict:
    """All three paths up at once and measured in rounds (envoy, empty, full, envoy, ...), so the
    shared machine's drift falls on all three alike; the spread over rounds is reported."""
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    mock_port = free_ports(1)[0]
    mock = subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "cpu": _cpu_model(),
                                 "load_average_at_start": os.getloadavg()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load_generator": "wrk (Debian), 1 thread", "duration_s": args.duration,
                     "connections": args.connections, "rounds": args.rounds, "scenarios": {}}
    procs: list[subprocess.Popen] = []
    stack = None
    try:
        wait_port(mock_port)
        fixed, fixed_port = start_fixed_upstream(tmp, mock_port=mock_port)
        procs.append(fixed)
        up_stream = [f"--upstream={n}=http://127.0.0.1:{fixed_port}" for n in ("openai", "anthropic", "gemini", "bedrock")]
        stack = start_stack(tmp / "full", *up_stream, workers=args.workers)
        token = stack.token(sub="bench", roles="developer", tenant="acme")
        ep = free_ports(args.workers)
        empties = [subprocess.Popen([PY, str(REPO / "tests" / "bench" / "empty_processor.py"), "--port", str(p)])
                   for p in ep]
        procs += empties
        for p in ep:
            wait_port(p)
        envoy_proc, envoy_port, envoy_admin = start_front_envoy(tmp / "envoy", upstream_port=fixed_port, ext_ports=None)
        empty_proc, empty_port, empty_admin = start_front_envoy(tmp / "empty", upstream_port=fixed_port, ext_ports=ep)
        procs += [envoy_proc, empty_proc]
        full_envoy = [p for p in children(stack.proc.pid) if "envoy" in cmdline(p)]
        paths = {
            "envoy": {"port": envoy_port, "headers": {}, "admin": envoy_admin, "envoy_pid": envoy_proc.pid},
            "empty": {"port": empty_port, "headers": {}, "admin": empty_admin, "envoy_pid": empty_proc.pid},
            "full": {"port": stack.port, "headers": {"authorization": f"Bearer {token}"}, "admin": stack.admin_port,
                     "envoy_pid": full_envoy[0] if full_envoy else None},
        }
        for name, p in paths.items():       # warm-up, and a check that every path answers 200
            w = run_wrk(p["port"], chat_body(False), p["headers"], duration_s=1, connections=4)
            if w["errors"] or not w["requests"]:
                raise RuntimeError(f"{name}: warm-up failed: {w}")
        maxes: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
        for _ in range(args.rounds):
            for name in SCENARIOS:
                p = paths[name]
                maxes[name].append(wrk_max(p["port"], p["headers"], duration=args.duration,
                                           connections=args.connections,
                                           workers=_scenario_pids(name, stack, empties),
                                           envoy_pid=p["envoy_pid"], admin_port=p["admin"]))
        half = round(_spread(maxes["full"], "rps")["median"] / 2, 1)
        paced: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
        for _ in range(args.rounds):
            for name in SCENARIOS:
                p = paths[name]
                paced[name].append(run_wrk(p["port"], chat_body(False), p["headers"], duration_s=args.duration,
                                           connections=args.connections, rate=half))
        for name in SCENARIOS:
            p = paths[name]
            sc: dict = {"max_runs": maxes[name], "half_rate_runs": paced[name]}
            for key in ("rps", "p50_ms", "p99_ms", "worker_cpu_ms_per_request", "requests_per_worker_cpu_s",
                        "envoy_cpu_ms_per_request"):
                sc[key] = _spread(maxes[name], key)
            sc["messages_per_exchange"] = maxes[name][-1]["messages_per_exchange"]
            sc["half_rate"] = {k: _spread(paced[name], k) for k in ("rps", "p50_ms", "p99_ms")}
            # Time to first token: the Python client (wrk cannot see it); streams go to the mock.
            sc["ttft"] = asyncio.run(measure_ttft(p["port"], p["headers"], duration=min(args.duration, 6)))
            results["scenarios"][name] = sc
        results["half_rate_rps"] = half
        results["scenarios"]["full"]["peak_rss_mb_per_worker"] = [
            round(proc_hwm_mb(p) or 0, 1) for p in _scenario_pids("full", stack, empties)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if stack is not None:
            stack.stop()
        mock.terminate()
        mock.wait(10)
    results["derived"] = derive(results)
    return results


STREAM = {"accept": "text/event-stream"}     # the fixed upstream passes these on to the mock


async def measure_ttft(port: int, headers: dict[str, str], *, duration: float) -> dict:
    raw_stream = build_request("/v1/chat/completions", chat_body(True), {**headers, **STREAM})
    out = {"stream": (await open_loop(port, raw_stream, rate=5, duration_s=duration)).summary()}
    # The same kind of stream arriving at a model's pace: here the hold-back, not the plumbing,
    # decides how long the first token waits.
    raw_paced = build_request("/v1/chat/completions", chat_body(True, words=40), {**headers, **STREAM, **PACED})
    out["paced_stream"] = (await open_loop(port, raw_paced, rate=4, duration_s=4)).summary()
    return out


def derive(results: dict) -> dict:
    sc = results["scenarios"]
    full, empty, envoy = sc["full"], sc["empty"], sc["envoy"]

    def med(s: dict, k: str) -> float:
        return s[k]["median"]
    return {
        "full_vs_envoy_throughput": round(med(full, "rps") / med(envoy, "rps"), 4),
        "empty_vs_envoy_throughput": round(med(empty, "rps") / med(envoy, "rps"), 4),
        "full_vs_empty_throughput": round(med(full, "rps") / med(empty, "rps"), 3),
        "half_rate_rps": results["half_rate_rps"],
        "added_p50_ms_at_half_rate": round(full["half_rate"]["p50_ms"]["median"]
                                           - envoy["half_rate"]["p50_ms"]["median"], 3),
        "added_p99_ms_at_half_rate": round(full["half_rate"]["p99_ms"]["median"]
                                           - envoy["half_rate"]["p99_ms"]["median"], 3),
        "ledgergate_worker_cpu_ms_per_request": med(full, "worker_cpu_ms_per_request"),
        "empty_processor_cpu_ms_per_request": med(empty, "worker_cpu_ms_per_request"),
        "added_ttft_p50_ms_stream": _diff(full["ttft"]["stream"]["ttft_p50_ms"], envoy["ttft"]["stream"]["ttft_p50_ms"]),
        "added_ttft_p50_ms_paced_stream": _diff(full["ttft"]["paced_stream"]["ttft_p50_ms"],
                                                envoy["ttft"]["paced_stream"]["ttft_p50_ms"]),
        "peak_rss_mb_per_worker": full.get("peak_rss_mb_per_worker"),
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cell(s: dict, digits: int = 1) -> str:
    """median (min-max over the rounds)"""
    if not s:
        return "-"
    return f"{s['median']} ({s['min']}-{s['max']})"


def write_markdown(results: dict, md: Path) -> None:
    sc, d = results["scenarios"], results["derived"]
    names = {"envoy": "Envoy alone (fixed upstream)", "empty": "Envoy + empty Python ext_proc",
             "full": "Envoy + ledgergate, full pipeline"}
    load = ", ".join(f"{x:.1f}" for x in results["machine"]["load_average_at_start"])
    lines = [
        "<!-- BENCH:BEGIN (written by tests/bench/bench_e2e.py; do not edit by hand) -->",
        f"Run {results['date']} on {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}, load average {load} at the start; wrk (one thread, "
        f"{results['connections']} connections, POST of a 4 KB chat prompt with 18 e-mail addresses), Envoy, "
        f"the fixed upstream (an Envoy `direct_response`) and the processors on the same machine; "
        f"{results['rounds']} rounds of {results['duration_s']} s per path, the three paths alternated. "
        "Cells: median (min-max over the rounds).",
        "",
        "| path | req/s | p50 ms | p99 ms | messages per exchange (to / from processor) "
        "| processor CPU ms per request | requests per worker CPU-second | Envoy CPU ms per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        s = sc[name]
        m = s["messages_per_exchange"]
        msgs = f"{m['to_processor']} / {m['from_processor']}" if name != "envoy" else "-"
        lines.append(f"| {names[name]} | {_cell(s['rps'])} | {_cell(s['p50_ms'])} | {_cell(s['p99_ms'])} | {msgs} | "
                     f"{_cell(s['worker_cpu_ms_per_request'])} | {_cell(s['requests_per_worker_cpu_s'])} | "
                     f"{_cell(s['envoy_cpu_ms_per_request'])} |")
    lines += ["", f"Paced at half the full pipeline's median max rate ({results['half_rate_rps']} req/s offered; "
              "wrk paces each connection, latency from each send):", "",
              "| path | achieved req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name in SCENARIOS:
        h = sc[name]["half_rate"]
        lines.append(f"| {names[name]} | {_cell(h['rps'])} | {_cell(h['p50_ms'])} | {_cell(h['p99_ms'])} |")
    lines += ["", "Time to first token (Python client, streams from the mock provider through the fixed upstream):",
              "", "| path | 200-event stream TTFT p50 ms | total p50 ms | paced stream TTFT p50 ms |", "|---|---|---|---|"]
    for name in SCENARIOS:
        t = sc[name]["ttft"]
        lines.append(f"| {names[name]} | {t['stream']['ttft_p50_ms']} | {t['stream']['p50_ms']} | "
                     f"{t['paced_stream']['ttft_p50_ms']} |")
    lines += ["", "Derived (same run):", ""] + [f"- {k}: {v}" for k, v in d.items()]
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    a = p.parse_args()
    results = run(a)
    Path(a.out).write_text(json.dumps(results, indent=2))
    if a.md:
        write_markdown(results, Path(a.md))
    print(json.dumps(results["derived"], indent=2))


if __name__ == "__main__":
    main()
