"""A second stack on ports the first one owns refuses to start, and the first keeps answering with
its own issuer: with SO_REUSEPORT both would bind and split traffic (and the audit trail)."""

from __future__ import annotations

import socket
import subprocess
import textwrap

import httpx
import pytest

from ext_proc.cli.up import check_ports_free, render_envoy_config
from ext_proc.identity.dev import generate_dev_issuer
from tests.support import PY, REPO, free_ports, start_stack

pytestmark = pytest.mark.e2e


def _ask(stack, token: str) -> int:
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}, timeout=20)
    return r.status_code


def test_second_up_on_the_same_ports_refuses_and_the_first_keeps_its_traffic(tmp_path):
    first = start_stack(tmp_path / "a")
    try:
        token = first.token()
        cmd = [PY, "-m", "ext_proc.cli.main", "up", "--port", str(first.port), "--tls-port", str(first.tls_port),
               "--admin-port", str(first.admin_port), "--mock-port", str(first.mock_port),
               "--ext-proc-port", str(first.ext_proc_port), "--metrics-port", str(first.metrics_port),
               "--var-dir", str(tmp_path / "b" / "var")]
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert "already in use" in second.stderr
        assert f"127.0.0.1:{first.port} (--port)" in second.stderr
        assert "ledgergate ready" not in second.stdout
        # Every request reaches the first stack (its issuer, its audit trail).
        before = len(first.audit_records())
        assert [_ask(first, token) for _ in range(10)] == [200] * 10
        assert len(first.audit_records()) >= before + 20   # a decision and an outcome each
    finally:
        first.stop()


def test_check_ports_free_names_a_port_held_with_so_reuseport():
    port = free_ports(1)[0]
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    stranger.bind(("127.0.0.1", port))
    stranger.listen()
    try:
        with pytest.raises(SystemExit, match=rf"127.0.0.1:{port} \(--admin-port\)"):
            check_ports_free([("--port", free_ports(1)[0]), ("--admin-port", port)])
    finally:
        stranger.close()
    check_ports_free([("--admin-port", port)])   # free again


def test_rendered_envoy_listeners_do_not_share_ports(tmp_path):
    cfg = render_envoy_config(REPO / "envoy" / "local.yaml", port=1, tls_port=2, admin_port=3, ext_proc_ports=[4],
                              mock_port=5, upstreams={}, var_dir=tmp_path)
    assert [listener["enable_reuse_port"] for listener in cfg["static_resources"]["listeners"]] == [False, False]


def test_serve_refuses_a_port_another_server_listens_on(tmp_path):
    """gRPC binds with SO_REUSEPORT unless told otherwise: a worker would join a stranger's port."""
    port = free_ports(1)[0]
    generate_dev_issuer(tmp_path / "dev")
    config = tmp_path / "ledgergate.yaml"
    config.write_text(textwrap.dedent(f"""\
        server: {{listen: ["127.0.0.1:{port}"], metrics_listen: null}}
        identity:
          issuers:
            - {{name: dev, issuer: "https://ledgergate.local/dev", audiences: [ledgergate],
               jwks_file: "{tmp_path}/dev/jwks.json", algorithms: [EdDSA]}}
        policy: {{path: "{REPO}/policies/default.yaml", store: "{tmp_path}/policy-store"}}
        audit: {{sink: file, dir: "{tmp_path}/audit", signing_key: "{tmp_path}/keys/audit-signing.pem"}}
        classify: {{redaction_key_file: "{tmp_path}/keys/redaction-hash.key"}}
        """))
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    stranger.bind(("127.0.0.1", port))
    stranger.listen()
    try:
        proc = subprocess.run([PY, "-m", "ext_proc.cli.main", "serve", "--config", str(config)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    finally:
        stranger.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "audit").exists() or not any((tmp_path / "audit").iterdir())
