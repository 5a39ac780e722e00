"""Helpers for tests that run real processes: free ports, the local stack, the mock's request log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def unique_marker(prefix: str) -> str:
    """A unique word to find a request again in the mock's log: letters only, so the classifier
    never takes it for a phone number or an ID and redacts it on the way (hex digits can be all
    decimal)."""
    return prefix + "-" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:12])


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _below_ephemeral_range() -> tuple[int, int]:
    """Ports the kernel never hands out by itself: below net.ipv4.ip_local_port_range. A port
    picked inside that range can be taken as the source port of any outgoing connection on the
    machine (connect() prefers the even ports next to bind(0)'s odd ones) before the server binds
    it, and servers refuse to share a port."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10240, low) if low - 10240 > 4096 else (1024, low)


def free_port_range(n: int, attempts: int = 100) -> int:
    """A base port with base .. base+n-1 all free (`ledgergate up --workers N` listens on N
    consecutive ports from --ext-proc-port), chosen outside the ephemeral range."""
    import random

    low, high = _below_ephemeral_range()
    for _ in range(attempts):
        base = random.randrange(low, high - n)
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


@dataclass
class Stack:
    proc: subprocess.Popen
    var_dir: Path
    audit_dir: Path
    port: int
    tls_port: int
    admin_port: int
    mock_port: int
    ext_proc_port: int
    metrics_port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, sub: str = "alice", roles: str = "developer", tenant: str | None = "acme",
              ttl: str = "1h", act: str | None = None, groups: str = "") -> str:
        cmd = [PY, "-m", "ext_proc.cli.main", "token", "--sub", sub, "--roles", roles,
               "--var-dir", str(self.var_dir), "--ttl", ttl]
        if tenant:
            cmd += ["--tenant", tenant]
        if act:
            cmd += ["--act", act]
        if groups:
            cmd += ["--groups", groups]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def mock_requests(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mock_port}/_mock/requests", timeout=5) as r:
            return json.loads(r.read())

    def clear_mock(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.mock_port}/_mock/requests", method="DELETE")
        urllib.request.urlopen(req, timeout=5).read()

    def audit_records(self) -> list[dict]:
        out = []
        for f in sorted(self.audit_dir.glob("*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_stack(tmp: Path, *extra: str, workers: int = 1, env: dict | None = None) -> Stack:
    # `up` gives worker i the ports --ext-proc-port + i and --metrics-port + i.
    port, tls_port, admin_port, mock_port = free_ports(4)
    taken = {port, tls_port, admin_port, mock_port}
    ext_proc_port = metrics_port = 0
    for _ in range(100):
        ext_proc_port, metrics_port = free_port_range(workers), free_port_range(workers)
        ext_range = set(range(ext_proc_port, ext_proc_port + workers))
        metrics_range = set(range(metrics_port, metrics_port + workers))
        if not (ext_range & metrics_range) and not ((ext_range | metrics_range) & taken):
            break
    var_dir = tmp / "var"
    audit_dir = var_dir / "audit"
    log_path = tmp / "stack.log"
    cmd = [PY, "-m", "ext_proc.cli.main", "up", "--port", str(port), "--tls-port", str(tls_port),
           "--admin-port", str(admin_port), "--mock-port", str(mock_port), "--ext-proc-port", str(ext_proc_port),
           "--metrics-port", str(metrics_port), "--var-dir", str(var_dir), "--workers", str(workers), *extra]
    tmp.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ledgergate up exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if b"ledgergate ready" in log_path.read_bytes():
            return Stack(proc, var_dir, audit_dir, port, tls_port, admin_port, mock_port, ext_proc_port,
                         metrics_port, log_path)
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"stack not ready:\n{log_path.read_text()[-4000:]}")


def start_envoy(tmp: Path, *, ext_proc_ports: list[int], mock_port: int,
                message_timeout: str | None = None, template: Path | None = None) -> tuple[subprocess.Popen, int]:
    """Envoy alone from envoy/local.yaml (ports rewritten); returns (process, http port)."""
    import yaml

    from ext_proc.cli.devmaterial import ensure_tls_cert
    from ext_proc.cli.up import envoy_binary, render_envoy_config

    port, tls_port, admin_port = free_ports(3)
    var_dir = tmp / "var"
    ensure_tls_cert(var_dir / "dev" / "tls")
    cfg = render_envoy_config(template or REPO / "envoy" / "local.yaml", port=port, tls_port=tls_port,
                              admin_port=admin_port, ext_proc_ports=ext_proc_ports, mock_port=mock_port,
                              upstreams={}, var_dir=var_dir)
    if message_timeout:
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for hf in f["typed_config"]["http_filters"]:
                        if hf["name"] == "envoy.filters.http.ext_proc":
                            hf["typed_config"]["message_timeout"] = message_timeout
    path = tmp / f"envoy-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--concurrency", "1",
                             "--base-id", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("envoy not ready")


def inside_one_window(window_s: int, need_s: float = 5.0) -> None:
    """Rate-limit windows are fixed and aligned to the epoch: a test whose counts must stay in one
    window starts in a fresh one when a boundary is under `need_s` away (a burst straddling a
    minute once admitted twice the budget)."""
    left = window_s - time.time() % window_s
    if left < need_s:
        time.sleep(left + 0.05)


def mock_reply(text: str) -> str:
    """The mock's x-mock-reply directive for TEXT, base64-encoded: the header travels through
    ledgergate, which inspects header values, and the secret a test wants in the *answer* must not
    make the *request* look like it carries one."""
    import base64

    return "b64:" + base64.b64encode(text.encode("utf-8")).decode("ascii")
