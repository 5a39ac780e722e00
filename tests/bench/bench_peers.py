"""`make bench-peers` (optional): the same load as `make bench`, in one run, through

  mock      - the mock provider directly (the floor for a proxy that is itself the upstream hop)
  litellm   - a LiteLLM proxy (one worker, no guardrails, master key only) -> mock
  envoy     - Envoy alone -> mock
  full      - Envoy + ledgergate, full pipeline -> mock

so the overhead of a Python gateway without content inspection and of ledgergate's inspection
can be read side by side. LiteLLM is installed on first use into var/bench/litellm-venv (never
into the project's venv: it pins its own web stack). Loopback only, bounded in count and time.
Writes docs/benchmarks-peers.json and a table between the PEERS markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
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

from tests.bench.bench_e2e import _calibrate, _cpu_model, measure, start_envoy_variant  # noqa: E402
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


def start_litellm(venv: Path, tmp: Path, mock_port: int) -> tuple[subprocess.Popen, int]:
    port = free_ports(1)[0]
    cfg = tmp / "litellm.yaml"
    cfg.write_text(json.dumps({
        "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-mock"}}],
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


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-peers-"))
    venv = REPO / "var" / "bench" / "litellm-venv"
    litellm_bin(venv)
    mock_port = free_ports(1)[0]
    mock = subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mock_port)
    results: dict = {"machine": {"cores": os.cpu_count(), "cpu": _cpu_model()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "litellm": litellm_version(venv), "duration_s": args.duration,
                     "concurrency": args.concurrency, "scenarios": {}}
    opts = dict(duration=args.duration, concurrency=args.concurrency)
    llm_headers = {"authorization": f"Bearer {MASTER_KEY}"}
    try:
        # Offered loads are fractions of the slower gateway's maximum, so neither is measured
        # past saturation (where latency is only queueing).
        proc, port = start_litellm(venv, tmp, mock_port)
        try:
            llm_max = asyncio.run(_calibrate(port, llm_headers, args))[-1] / 0.75
        finally:
            proc.terminate()
            proc.wait(20)
        stack = start_stack(tmp / "full", f"--upstream=openai=http://127.0.0.1:{mock_port}")
        try:
            headers = {"authorization": f"Bearer {stack.token(sub='bench', roles='developer', tenant='acme')}"}
            full_max = asyncio.run(_calibrate(stack.port, headers, args))[-1] / 0.75
            rates = [round(min(llm_max, full_max) * f, 1) for f in (0.25, 0.5)]
            results["rates"] = rates
            results["scenarios"]["full"] = asyncio.run(measure(stack.port, headers, rates=rates, **opts))
        finally:
            stack.stop()
        results["scenarios"]["mock"] = asyncio.run(measure(mock_port, {}, rates=rates, **opts))
        proc, port = start_envoy_variant(tmp / "envoy", mock_port=mock_port, ext_ports=None)
        try:
            results["scenarios"]["envoy"] = asyncio.run(measure(port, {}, rates=rates, **opts))
        finally:
            proc.terminate()
            proc.wait(10)
        proc, port = start_litellm(venv, tmp, mock_port)
        try:
            results["scenarios"]["litellm"] = asyncio.run(measure(port, llm_headers, rates=rates, **opts))
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        mock.terminate()
        mock.wait(10)
    return results


def write_markdown(results: dict, md: Path) -> None:
    sc, rates = results["scenarios"], results["rates"]
    lines = [
        "<!-- PEERS:BEGIN (written by tests/bench/bench_peers.py; do not edit by hand) -->",
        f"Run {results['date']} on {results['machine']['cpu']}, {results['machine']['cores']} cores; LiteLLM "
        f"{results['litellm']} (one worker, no guardrails); {results['duration_s']} s per measurement, closed loop "
        f"at concurrency {results['concurrency']}. Every scenario ends at the same mock provider.",
        "",
        "| path | inspects content | max req/s | " + " | ".join(f"p50 / p99 ms @ {r} req/s" for r in rates)
        + " | stream TTFT p50 ms |",
        "|---|---|---|" + "---|" * len(rates) + "---|",
    ]
    labels = {"mock": ("client -> mock", "no"), "litellm": ("client -> LiteLLM -> mock", "no"),
              "envoy": ("client -> Envoy -> mock", "no"),
              "full": ("client -> Envoy + ledgergate -> mock", "yes (JWT, classification, policy, redaction, "
                                                              "signed durable audit, response inspection)")}
    for name in ("mock", "envoy", "litellm", "full"):
        s = sc[name]
        cells = [f"{s['open'][str(r)]['p50_ms']} / {s['open'][str(r)]['p99_ms']}" for r in rates]
        lines.append(f"| {labels[name][0]} | {labels[name][1]} | {s['max']['throughput_rps']} | "
                     + " | ".join(cells) + f" | {s['stream']['ttft_p50_ms']} |")
    half = str(rates[-1])
    lines += ["", "Offered loads are a quarter and half of the slower gateway's maximum.",
              "", f"Added p50 at {half} req/s: LiteLLM over the mock "
                  f"{round(sc['litellm']['open'][half]['p50_ms'] - sc['mock']['open'][half]['p50_ms'], 2)} ms; "
                  f"ledgergate over Envoy alone "
                  f"{round(sc['full']['open'][half]['p50_ms'] - sc['envoy']['open'][half]['p50_ms'], 2)} ms.",
              "<!-- PEERS:END -->"]
    block = "\n".join(lines)
    text = md.read_text()
    if "<!-- PEERS:BEGIN" in text:
        text = text.split("<!-- PEERS:BEGIN")[0] + block + text.split("<!-- PEERS:END -->", 1)[1]
    else:
        text = text.rstrip() + "\n\n## Side by side with a peer (make bench-peers)\n\n" + block + "\n"
    md.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-peers.json"))
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    a = p.parse_args()
    results = run(a)
    Path(a.out).write_text(json.dumps(results, indent=2))
    write_markdown(results, Path(a.md))
    print(json.dumps({k: v["max"]["throughput_rps"] for k, v in results["scenarios"].items()}))


if __name__ == "__main__":
    main()
