"""What a new operator meets first on the command line: config errors as `file:line: message`
with exit 2 (no traceback), `token` finding the stack's var dir, JSON-only logs, the README's
audit one-liner with several segments, and an Envoy that starts without warnings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from ext_proc.cli.devmaterial import ensure_tls_cert
from ext_proc.cli.up import envoy_binary, render_envoy_config
from ext_proc.identity.dev import generate_dev_issuer
from tests.support import REPO, free_ports

LG = [sys.executable, "-m", "ext_proc.cli.main"]


def _run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*LG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_config_errors_are_file_line_message_and_exit_2(tmp_path):
    cases = {
        "identity.yaml": ("server: {listen: ['127.0.0.1:0'], metrics_listen: null}\nidentity:\n  issuers:\n"
                          "    - name: a\n      audience: x\n", r"identity\.yaml:4: identity\.issuers\[0\]: unknown key"),
        "top.yaml": ("bogus: 1\n", r"top\.yaml:1: bogus: unknown top-level key"),
        "yaml.yaml": ("a: [\n", r"yaml\.yaml:2: not valid YAML"),
        "upstream.yaml": ("upstreams:\n  openai:\n    timeout: soon\n", r"upstream\.yaml:3: upstreams\.openai\.timeout"),
        "audit.yaml": ("audit:\n  sink: file\n  witnes: {dir: /mnt/w}\n", r"audit\.yaml:3: audit\.witnes: unknown key"),
        "ratelimit.yaml": ("ratelimit:\n  backend: memcached\n", r"ratelimit\.yaml:2: ratelimit\.backend"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        res = _run("serve", "--config", name, cwd=tmp_path)
        assert res.returncode == 2, (name, res.stderr[-2000:])
        assert re.search(expected, res.stderr), (name, res.stderr)
        assert "Traceback" not in res.stderr


def test_serve_outside_the_repository_says_where_it_looked(tmp_path):
    res = _run("serve", "--listen", f"127.0.0.1:{free_ports(1)[0]}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{tmp_path}/policies/default.yaml" in res.stderr and "run it from the repository" in res.stderr


def test_token_from_another_directory_uses_the_nearest_stack_var_dir(tmp_path):
    stack_var = tmp_path / "project" / "var"
    generate_dev_issuer(stack_var / "dev")
    sub = tmp_path / "project" / "src" / "deep"
    sub.mkdir(parents=True)
    res = _run("token", "--sub", "alice", cwd=sub)
    assert res.returncode == 0 and f"signed by the dev issuer in {stack_var}" in res.stderr
    kid = json.loads((stack_var / "dev" / "jwks.json").read_text())["keys"][0]["kid"]
    import jwt

    assert jwt.get_unverified_header(res.stdout.strip())["kid"] == kid
    assert not (sub / "var").exists()


def test_up_help_shows_the_default_ports(tmp_path):
    out = _run("up", "--help", cwd=tmp_path).stdout
    for flag, port in (("--port", 10000), ("--tls-port", 10443), ("--admin-port", 9901),
                       ("--ext-proc-port", 50051), ("--mock-port", 18080), ("--metrics-port", 9464)):
        assert re.search(rf"{flag} \S+\s+.*\(default: {port}\)", out), flag


def test_library_log_lines_are_json_too(tmp_path):
    # In a child process: logging and structlog configuration is process-wide.
    script = textwrap.dedent("""
        import logging
        from ext_proc.cli.logging import configure
        configure("info")
        logging.getLogger("httpx").info("HTTP Request: GET https://idp.example/jwks")   # dropped: chatty
        logging.getLogger("httpx").warning("odd %s", "reply")
        logging.getLogger("grpc").error("broken")
    """)
    err = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60).stderr
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert [(x["logger"], x["event"]) for x in lines] == [("httpx", "odd reply"), ("grpc", "broken")]


def test_the_readme_audit_one_liner_works_with_two_segments(tmp_path):
    line = next(x for x in (REPO / "README.md").read_text().splitlines() if "json.tool --json-lines" in x)
    audit = tmp_path / "var" / "audit"
    audit.mkdir(parents=True)
    (audit / "a.jsonl").write_text('{"kind": "decision", "n": 1}\n{"kind": "outcome", "n": 2}\n')
    time.sleep(0.02)
    (audit / "b.jsonl").write_text('{"kind": "decision", "n": 3}\n{"kind": "outcome", "n": 4}\n')
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    res = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    assert '"n": 3' in res.stdout and '"n": 4' in res.stdout


def test_envoy_starts_without_warnings(tmp_path):
    """No `global_downstream_max_connections` warning: the configs bound downstream connections."""
    ensure_tls_cert(tmp_path / "var" / "dev" / "tls")
    port, tls_port, admin, ext, mock = free_ports(5)
    cfg = render_envoy_config(REPO / "envoy" / "local.yaml", port=port, tls_port=tls_port, admin_port=admin,
                              ext_proc_ports=[ext], mock_port=mock, upstreams={}, var_dir=tmp_path / "var")
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "warn", "--base-id", str(admin)],
                            stderr=subprocess.PIPE, text=True)
    try:
        import urllib.request

        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=0.5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    warnings = [x for x in err.splitlines() if "[warning]" in x and "caught ENVOY_SIGTERM" not in x]
    assert warnings == []
