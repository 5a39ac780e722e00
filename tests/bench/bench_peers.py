"""`make bench-peers` (optional): the same load as `make bench`, by wrk, in one run, through

  envoy     - Envoy alone -> fixed upstream
  litellm   - a LiteLLM proxy (one worker, no guardrails, master key only) -> fixed upstream
  full      - Envoy + ledgergate, full pipeline -> fixed upstream

so the overhead of a Python gateway without content inspection and of ledgergate's inspection
can be read side by side (issue 23: ledgergate >= 20x LiteLLM). The fixed upstream is the Envoy
`direct_response` of tests/bench/wrk.py, so every path ends at the same near-free answer, and the
load generator is wrk (the Python client measured itself, not Envoy). The three paths are measured
in alternating rounds so the shared machine's drift falls on all alike; the gateway processes' CPU
per request is read from /proc around exactly the requests wrk counted. LiteLLM is installed on
first use into var/bench/litellm-venv (never into the project's venv: it pins its own web stack).
Loopback only, bounded in count and time. Writes docs/benchmarks-peers.json and a table between
the PEERS markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.bench_e2e import _cpu_model, _spread, chat_body, children, cmdline, proc_cpu_s  # noqa: E402
from tests.bench.wrk import run_wrk, start_fixed_upstream, start_front_envoy  # noqa: E402
from tests.support import free_ports, start_stack, wait_port  # noqa: E402

PY = sys.executable
LITELLM_SPEC = "litellm[proxy]>=1.60"
MASTER_KEY = "sk-bench-master-key-0123456789"


def litellm_bin(venv: Path) -> Path:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC], check=True)
    return exe


def litellm_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def start_litellm(venv: Path, tmp: Path, upstream_port: int) -> tuple[subprocess.Popen, int]:
    port = free_ports(1)[0]
    cfg = tmp / "litellm.yaml"
    cfg.write_text(json.dumps({
        "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "sk-mock"}}],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": MASTER_KEY}}))
    log = open(tmp / "litellm.log", "wb")
    proc = subprocess.Popen([str(litellm_bin(venv)), "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, LITELLM_LOG="ERROR"))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).read()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited:\n{(tmp / 'litellm.log').read_text()[-3000:]}") from None
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("litellm did not come up")


def _first_answer(port: int, headers: dict[str, str]) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=chat_body(False),
                                 headers={"content-type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        if r.status != 200:
            raise RuntimeError(f"port {port}: first request answered {r.status}")


def _tree_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_s(pid)
        except OSError:      # a child that exited between listing and reading
            pass
    return total


def _wrk_max(port: int, headers: dict[str, str], *, duration: float, connections: int, pids: list[int]) -> dict:
    """One closed-loop wrk run, with the gateway processes' CPU read around it."""
    cpu0 = _tree_cpu_s(pids)
    r = run_wrk(port, chat_body(False), headers, duration_s=duration, connections=connections)
    if pids:
        r["gateway_cpu_ms_per_request"] = round(1000 * (_tree_cpu_s(pids) - cpu0) / max(1, r["requests"]), 3)
    return r


SCENARIOS = ("envoy", "litellm", "full")


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-peers-"))
    venv = REPO / "var" / "bench" / "litellm-venv"
    litellm_bin(venv)
    mock_port = free_ports(1)[0]
    mock = subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict = {"machine": {"cores": os.cpu_count(), "cpu": _cpu_model(),
                                 "load_average_at_start": os.getloadavg()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "litellm": litellm_version(venv), "load_generator": "wrk (Debian), 1 thread",
                     "duration_s": args.duration, "connections": args.connections, "rounds": args.rounds,
                     "scenarios": {}}
    procs: list[subprocess.Popen] = []
    stack = None
    try:
        wait_port(mock_port)
        fixed, fixed_port = start_fixed_upstream(tmp, mock_port=mock_port)
        procs.append(fixed)
        llm, llm_port = start_litellm(venv, tmp, fixed_port)
        procs.append(llm)
        envoy_proc, envoy_port, _ = start_front_envoy(tmp / "envoy", upstream_port=fixed_port, ext_ports=None)
        procs.append(envoy_proc)
        stack = start_stack(tmp / "full", f"--upstream=openai=http://127.0.0.1:{fixed_port}")
        token = stack.token(sub="bench", roles="developer", tenant="acme")
        paths = {
            "envoy": {"port": envoy_port, "headers": {}, "pids": [envoy_proc.pid]},
            "litellm": {"port": llm_port, "headers": {"authorization": f"Bearer {MASTER_KEY}"},
                        "pids": [llm.pid, *children(llm.pid)]},
            # ledgergate's workers and its Envoy: the whole gateway, as LiteLLM's row is the whole proxy.
            "full": {"port": stack.port, "headers": {"authorization": f"Bearer {token}"},
                     "pids": [p for p in children(stack.proc.pid) if "serve" in cmdline(p) or "envoy" in cmdline(p)]},
        }
        for name, p in paths.items():       # warm-up, and a check that every path answers 200
            _first_answer(p["port"], p["headers"])   # LiteLLM's first request loads its model tables
            w = run_wrk(p["port"], chat_body(False), p["headers"], duration_s=2, connections=4)
            if w["errors"] or not w["requests"]:
                raise RuntimeError(f"{name}: warm-up failed: {w}")
        maxes: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
        for _ in range(args.rounds):
            for name in SCENARIOS:
                p = paths[name]
                maxes[name].append(_wrk_max(p["port"], p["headers"], duration=args.duration,
                                            connections=args.connections, pids=p["pids"]))
        # Latency at the same offered load for all three: half of the slower gateway's maximum.
        half = round(min(_spread(maxes[n], "rps")["median"] for n in ("litellm", "full")) / 2, 1)
        # wrk paces each connection (one request per connections/rate s): fewer connections at a low rate,
        # so each one sends several requests within a round.
        paced_connections = max(1, min(args.connections, int(half // 2)))
        paced: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
        for _ in range(args.rounds):
            for name in SCENARIOS:
                p = paths[name]
                paced[name].append(run_wrk(p["port"], chat_body(False), p["headers"], duration_s=args.duration,
                                           connections=paced_connections, rate=half))
        for name in SCENARIOS:
            sc: dict = {"max_runs": maxes[name], "half_rate_runs": paced[name]}
            for key in ("rps", "p50_ms", "p99_ms", "gateway_cpu_ms_per_request"):
                sc[key] = _spread(maxes[name], key)
            sc["half_rate"] = {k: _spread(paced[name], k) for k in ("rps", "p50_ms", "p99_ms")}
            results["scenarios"][name] = sc
        results["half_rate_rps"] = half
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if stack is not None:
            stack.stop()
        mock.terminate()
        mock.wait(10)
    sc = results["scenarios"]
    med = {n: sc[n]["rps"]["median"] for n in SCENARIOS}
    results["derived"] = {
        "full_vs_litellm_throughput": round(med["full"] / med["litellm"], 2),
        "full_vs_envoy_throughput": round(med["full"] / med["envoy"], 4),
        "litellm_vs_envoy_throughput": round(med["litellm"] / med["envoy"], 4),
        "added_p50_ms_at_half_rate_full_over_envoy": round(
            sc["full"]["half_rate"]["p50_ms"]["median"] - sc["envoy"]["half_rate"]["p50_ms"]["median"], 3),
        "added_p50_ms_at_half_rate_litellm_over_envoy": round(
            sc["litellm"]["half_rate"]["p50_ms"]["median"] - sc["envoy"]["half_rate"]["p50_ms"]["median"], 3),
    }
    return results


def _cell(s: dict) -> str:
    return f"{s['median']} ({s['min']}-{s['max']})" if s else "-"


def write_markdown(results: dict, md: Path) -> None:
    sc, d = results["scenarios"], results["derived"]
    load = ", ".join(f"{x:.1f}" for x in results["machine"]["load_average_at_start"])
    labels = {"envoy": ("client -> Envoy -> fixed upstream", "no"),
              "litellm": ("client -> LiteLLM -> fixed upstream", "no"),
              "full": ("client -> Envoy + ledgergate -> fixed upstream", "yes (JWT, classification, policy, "
                       "redaction, signed durable audit, response inspection)")}
    lines = [
        "<!-- PEERS:BEGIN (written by tests/bench/bench_peers.py; do not edit by hand) -->",
        f"Run {results['date']} on {results['machine']['cpu']}, {results['machine']['cores']} cores, load average "
        f"{load} at the start; LiteLLM {results['litellm']} (one worker, no guardrails); wrk (one thread, "
        f"{results['connections']} connections, the 4 KB chat prompt of `make bench`); {results['rounds']} rounds "
        f"of {results['duration_s']} s per path, the paths alternated. Every path ends at the same fixed upstream "
        "(an Envoy `direct_response`). Gateway CPU: the LiteLLM process and its children; ledgergate's workers "
        "and its Envoy. Cells: median (min-max over the rounds).",
        "",
        "| path | inspects content | max req/s | p50 ms at max | gateway CPU ms per request "
        f"| p50 / p99 ms at {results['half_rate_rps']} req/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        s = sc[name]
        h = s["half_rate"]
        lines.append(f"| {labels[name][0]} | {labels[name][1]} | {_cell(s['rps'])} | {_cell(s['p50_ms'])} | "
                     f"{_cell(s['gateway_cpu_ms_per_request'])} | {h['p50_ms'].get('median')} / "
                     f"{h['p99_ms'].get('median')} |")
    lines += ["", f"Paced load: half of the slower gateway's median maximum ({results['half_rate_rps']} req/s).",
              "", "Derived (same run):", ""] + [f"- {k}: {v}" for k, v in d.items()]
    lines.append("<!-- PEERS:END -->")
    block = "\n".join(lines)
    text = md.read_text()
    if "<!-- PEERS:BEGIN" in text:
        text = text.split("<!-- PEERS:BEGIN")[0] + block + text.split("<!-- PEERS:END -->", 1)[1]
    else:
        text = text.rstrip() + "\n\n## Side by side with a peer (make bench-peers)\n\n" + block + "\n"
    md.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-peers.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    a = p.parse_args()
    results = run(a)
    Path(a.out).write_text(json.dumps(results, indent=2))
    write_markdown(results, Path(a.md))
    print(json.dumps({"max_rps": {k: v["rps"]["median"] for k, v in results["scenarios"].items()},
                      **results["derived"]}))


if __name__ == "__main__":
    main()
