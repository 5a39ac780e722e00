"""Processing-mode A/B for issue 23 through the real Envoy, both variants up at once and
alternated (A, B, A, B ...) by wrk, with the empty processor (so only the plumbing differs):

  duplex        - today's modes: response body FULL_DUPLEX_STREAMED, response trailers SEND
  per-response  - response body BUFFERED at the filter, trailers SKIP, allow_mode_override with
                  allowed_override_modes = [FULL_DUPLEX_STREAMED + trailers SEND]: a JSON answer
                  is one buffered body message, an SSE answer is switched to full duplex at its
                  response headers

Also checks that a stream through the per-response variant arrives whole (every event, [DONE]);
the empty processor echoes, so that check cannot tell an ignored override from an honoured one:
Envoy's ext_proc message counters can (the full-pipeline A/B is in commit 6eb2ab6,
`bench_modes.py --set full`, with the servicer support it needs).
Usage: .venv/bin/python tests/bench/bench_modes.py [--set modes|grpc|transport] [--rounds 4] [--duration 4]
(--set grpc: the same alternation over gRPC server options instead of processing modes;
--set transport: loopback TCP against a Unix socket between Envoy and the processor)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.bench_e2e import PY, _spread, chat_body, wrk_max  # noqa: E402
from tests.bench.loadgen import build_request  # noqa: E402
from tests.bench.wrk import run_wrk, start_fixed_upstream, start_front_envoy  # noqa: E402
from tests.support import free_ports, wait_port  # noqa: E402

PER_RESPONSE = {
    "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                        "request_trailer_mode": "SKIP", "response_header_mode": "SEND",
                        "response_body_mode": "BUFFERED", "response_trailer_mode": "SKIP"},
    "allow_mode_override": True,
    # Envoy compares the *effective* override with each entry, field by field: a DEFAULT header or
    # trailer mode becomes the filter's, an unset body mode NONE. An entry naming only the two
    # fields the processor sets matches nothing, and then (seen with 1.40) Envoy keeps the body
    # BUFFERED and silently ignores the processor's streamed_response replies: the upstream's
    # original body reaches the client uninspected. Spell the effective mode out.
    "allowed_override_modes": [{"response_header_mode": "SEND", "request_body_mode": "NONE",
                                "response_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SKIP",
                                "response_trailer_mode": "SEND"}],
}
# name -> (ext_proc filter patch, empty processor arguments); "unix" in the arguments: the processor
# listens on a Unix socket and Envoy's ledgergate cluster is a pipe (the sidecar's transport).
SETS = {
    "modes": {"duplex": (None, []), "per-response": (PER_RESPONSE, ["--response-body", "per-response"])},
    # gRPC server options on the plumbing floor (issue 23: flow control, BDP pings, target).
    "grpc": {"default": (None, []),
             "no-bdp-probe": (None, ["--grpc-option", "grpc.http2.bdp_probe=0"]),
             "big-windows": (None, ["--grpc-option", "grpc.http2.lookahead_bytes=1048576",
                                    "--grpc-option", "grpc.http2.bdp_probe=0"])},
    # The transport to the processor: loopback TCP (envoy/local.yaml, make bench) or a Unix socket
    # (envoy/sidecar.yaml; envoyproxy/ai-gateway does the same).
    "transport": {"tcp": (None, []), "unix": (None, ["unix"])},
}


async def stream_whole(port: int) -> dict:
    """One 200-event stream: status, whether [DONE] arrived, and the number of data events."""
    raw = build_request("/v1/chat/completions", chat_body(True), {"accept": "text/event-stream"})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw.replace(b"host: 127.0.0.1", b"host: 127.0.0.1\r\nconnection: close"))
    data = await asyncio.wait_for(reader.read(-1), 20)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "done": b"data: [DONE]" in rest,
            "events": rest.count(b"data: ")}


def _wait_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--set", choices=sorted(SETS), default="modes")
    args = ap.parse_args()
    variants = SETS[args.set]
    tmp = Path(tempfile.mkdtemp(prefix="lg-modes-"))
    procs: list[subprocess.Popen] = []
    mock_port = free_ports(1)[0]
    procs.append(subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_port(mock_port)
        fixed, fixed_port = start_fixed_upstream(tmp, mock_port=mock_port)
        procs.append(fixed)
        paths = {}
        for name, (patch, proc_args) in variants.items():
            ep = free_ports(1)[0]
            sock = tmp / f"{name}.sock" if "unix" in proc_args else None
            listen = ["--listen", f"unix:{sock}"] if sock else ["--port", str(ep)]
            proc = subprocess.Popen([PY, str(REPO / "tests" / "bench" / "empty_processor.py"), *listen,
                                     *[a for a in proc_args if a != "unix"]])
            procs.append(proc)
            if sock:
                _wait_socket(sock)
            else:
                wait_port(ep)
            envoy, port, admin = start_front_envoy(tmp / name, upstream_port=fixed_port, ext_ports=[ep],
                                                   filter_patch=patch, ext_socket=sock)
            procs.append(envoy)
            paths[name] = {"port": port, "admin": admin, "worker": proc.pid, "envoy": envoy.pid}
        out: dict = {"streams": {}, "runs": {n: [] for n in variants}}
        for name, p in paths.items():
            out["streams"][name] = asyncio.run(stream_whole(p["port"]))
            run_wrk(p["port"], chat_body(False), {}, duration_s=1, connections=4)
        for _ in range(args.rounds):
            for name, p in paths.items():
                out["runs"][name].append(wrk_max(p["port"], {}, duration=args.duration, connections=args.connections,
                                                 workers=[p["worker"]], envoy_pid=p["envoy"], admin_port=p["admin"]))
        for name in variants:
            runs = out["runs"][name]
            out[name] = {k: _spread(runs, k) for k in ("rps", "p50_ms", "p99_ms", "worker_cpu_ms_per_request",
                                                        "requests_per_worker_cpu_s", "envoy_cpu_ms_per_request")}
            out[name]["messages_per_exchange"] = runs[-1]["messages_per_exchange"]
            out[name]["errors"] = sum(r["errors"] for r in runs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    print(json.dumps(out["streams"]))
    for name in variants:
        print(name, out[name]["messages_per_exchange"], "errors", out[name]["errors"])
        for k, v in out[name].items():
            if isinstance(v, dict) and "median" in v:
                print(f"  {k}: {v['median']} ({v['min']}-{v['max']}) in order: "
                      f"{[r.get(k) for r in out['runs'][name]]}")


if __name__ == "__main__":
    main()
