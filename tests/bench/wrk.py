"""wrk (Debian's package, C, one thread) as the load generator for throughput and latency, a fixed
upstream that costs next to nothing, and the counters that say what one exchange cost.

The Python load generator (loadgen.py) tops out near 3,000 req/s on this machine, so with it
"Envoy alone" measured the client, not Envoy (issue 23); wrk does 20,000. The Python client stays
for what wrk cannot see: the time to the first content token of a stream.

The fixed upstream is a second Envoy answering every JSON request with one `direct_response`
(a chat completion of a fixed text), so the upstream's cost is the same small constant in every
scenario. Streamed requests (`accept: text/event-stream`) are passed on to the Python mock
provider, which is the only thing that streams like a model. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from ext_proc.cli.up import _wait_envoy_ready

REPO = Path(__file__).resolve().parents[2]

FIXED_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": (
        "Here is a short summary of the quarterly report: logistics costs fell, hiring is on plan, "
        "and the budget review for the next two quarters is scheduled for Tuesday.")},
        "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}})


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: `make bench` installs Debian's package (apt-get install wrk)")
    return path


def _wait_ready(admin_port: int, proc: subprocess.Popen, what: str) -> None:
    """`ledgergate up`'s own readiness wait (Envoy's /ready), with the process killed on failure."""
    try:
        _wait_envoy_ready(admin_port, time.time() + 30, proc)
    except SystemExit as exc:
        proc.kill()
        raise RuntimeError(f"{what}: {exc}") from None


def start_fixed_upstream(tmp: Path, *, mock_port: int) -> tuple[subprocess.Popen, int]:
    """An Envoy (one worker) that answers JSON requests itself and proxies streams to the mock."""
    from ext_proc.cli.up import envoy_binary
    from tests.support import free_ports

    port, admin_port = free_ports(2)
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "fixed", "enable_reuse_port": False,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "fixed",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/", "headers": [{"name": "accept", "string_match": {
                                "contains": "text/event-stream"}}]},
                             "route": {"cluster": "mock", "timeout": "60s"}},
                            {"match": {"prefix": "/"},
                             "direct_response": {"status": 200, "body": {"inline_string": FIXED_COMPLETION}},
                             "response_headers_to_add": [{"header": {"key": "content-type",
                                                                     "value": "application/json"}}]},
                        ]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{"name": "mock", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "mock", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": mock_port}}}}]}]}}],
        },
    }
    path = tmp / f"fixed-upstream-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--concurrency", "1",
                             "--base-id", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(admin_port, proc, "fixed upstream")
    return proc, port


def start_front_envoy(tmp: Path, *, upstream_port: int, ext_ports: list[int] | None,
                      filter_patch: dict | None = None,
                      ext_socket: Path | None = None) -> tuple[subprocess.Popen, int, int]:
    """Envoy from envoy/local.yaml with every provider pointed at the fixed upstream; without
    ext_ports the ext_proc filter is removed (Envoy alone). filter_patch is merged into the
    ext_proc filter's typed_config (processing-mode A/B); ext_socket reaches the processor over
    that Unix socket instead (as envoy/sidecar.yaml does). Returns (process, http port, admin port)."""
    from ext_proc.cli.devmaterial import ensure_tls_cert
    from ext_proc.cli.up import envoy_binary, render_envoy_config
    from tests.support import free_ports

    port, tls_port, admin_port = free_ports(3)
    ensure_tls_cert(tmp / "var" / "dev" / "tls")
    cfg = render_envoy_config(REPO / "envoy" / "local.yaml", port=port, tls_port=tls_port, admin_port=admin_port,
                              ext_proc_ports=ext_ports or [1], mock_port=upstream_port, upstreams={},
                              var_dir=tmp / "var")
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hfs = f["typed_config"]["http_filters"]
                if ext_ports is None:
                    f["typed_config"]["http_filters"] = [h for h in hfs if h["name"] != "envoy.filters.http.ext_proc"]
                elif filter_patch:
                    for h in hfs:
                        if h["name"] == "envoy.filters.http.ext_proc":
                            h["typed_config"].update(filter_patch)
    if ext_socket is not None:
        for cluster in cfg["static_resources"]["clusters"]:
            if cluster["name"] == "ledgergate":
                cluster["load_assignment"]["endpoints"] = [
                    {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(ext_socket)}}}}]}]
    path = tmp / f"envoy-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--concurrency", "2",
                             "--base-id", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(admin_port, proc, "envoy")
    return proc, port, admin_port


# wrk's Lua hooks: a POST with the given body and headers; optional pacing (`delay`, ms between a
# connection's requests) for a fixed offered load; the summary printed as one JSON line.
_LUA = """
wrk.method = "POST"
wrk.body = io.open(os.getenv("LG_WRK_BODY"), "rb"):read("*a")
wrk.headers["content-type"] = "application/json"
%(headers)s
local pause = tonumber(os.getenv("LG_WRK_DELAY_MS") or "0")
if pause > 0 then
  -- An exponential pause with the given mean: with a fixed one the connections stay in step and
  -- arrive as bursts of `connections` requests, so the paced p50 measured queueing in the burst.
  math.randomseed(os.time())
  function delay() return math.floor(-math.log(1 - math.random()) * pause) end
end
function done(summary, latency, requests)
  local s = summary
  io.write(string.format('LGWRK {"requests":%%d,"duration_us":%%d,"errors_connect":%%d,"errors_read":%%d,' ..
    '"errors_write":%%d,"errors_status":%%d,"errors_timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"mean_us":%%f,"max_us":%%d}\\n', s.requests, s.duration, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def run_wrk(port: int, body: bytes, headers: dict[str, str], *, duration_s: float, connections: int = 16,
            rate: float | None = None, path: str = "/v1/chat/completions") -> dict:
    """One wrk run (one thread). With `rate`, each connection waits a random (exponential) pause
    of mean connections/rate seconds between its requests: a paced load near `rate` whose
    arrivals are spread out as an open loop's are (latency is measured from each send; the
    achieved rate is reported)."""
    with tempfile.TemporaryDirectory(prefix="lg-wrk-") as d:
        body_path, script = Path(d) / "body", Path(d) / "post.lua"
        body_path.write_bytes(body)
        script.write_text(_LUA % {"headers": "\n".join(
            f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())})
        env = dict(os.environ, LG_WRK_BODY=str(body_path))
        if rate:
            env["LG_WRK_DELAY_MS"] = str(max(1, int(1000 * connections / rate)))
        out = subprocess.run([wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
                              "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
                             env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    m = re.search(r"^LGWRK (\{.*\})$", out.stdout, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    s = json.loads(m.group(1))
    secs = s["duration_us"] / 1e6
    errors = sum(v for k, v in s.items() if k.startswith("errors_"))
    return {"requests": s["requests"], "rps": round(s["requests"] / secs, 1), "errors": errors,
            "non_2xx_or_3xx": s["errors_status"], "offered_rps": rate,
            "p50_ms": round(s["p50_us"] / 1000, 3), "p90_ms": round(s["p90_us"] / 1000, 3),
            "p99_ms": round(s["p99_us"] / 1000, 3), "mean_ms": round(s["mean_us"] / 1000, 3),
            "max_ms": round(s["max_us"] / 1000, 3)}


def ext_proc_counters(admin_port: int) -> dict[str, int]:
    """Envoy's ext_proc counters summed over every ext_proc filter of the listener (the router
    filter's and, where configured, the upstream stage's): streams and messages each way."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=ext_proc", timeout=5) as r:
        text = r.read().decode()
    out = {"streams_started": 0, "stream_msgs_sent": 0, "stream_msgs_received": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        key = name.rsplit(".", 1)[-1]
        if key in out and value.strip().isdigit():
            out[key] += int(value)
    return out


def messages_per_exchange(before: dict[str, int], after: dict[str, int], requests: int) -> dict:
    d = {k: after[k] - before[k] for k in after}
    return {"to_processor": round(d["stream_msgs_sent"] / max(1, requests), 3),
            "from_processor": round(d["stream_msgs_received"] / max(1, requests), 3),
            "streams_per_request": round(d["streams_started"] / max(1, requests), 3)}
