"""Every Envoy config in envoy/ passes `envoy --mode validate`, and so does what `ledgergate up`
renders from the local one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ext_proc.cli.devmaterial import ensure_tls_cert
from ext_proc.cli.up import envoy_binary, render_envoy_config
from tests.support import REPO

pytestmark = pytest.mark.e2e

CONFIGS = sorted((REPO / "envoy").glob("*.yaml"))


def _validate(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def workdir(tmp_path):
    # The configs name var/ paths relative to the working directory (dev TLS material, sockets).
    ensure_tls_cert(tmp_path / "var" / "dev" / "tls")
    ca = tmp_path / "var" / "dev" / "tls" / "ca.crt"
    shutil.copy(tmp_path / "var" / "dev" / "tls" / "server.crt", ca)
    return tmp_path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path, workdir):
    res = _validate(path, workdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_rendered_local_config_validates(workdir):
    cfg = render_envoy_config(REPO / "envoy" / "local.yaml", port=20000, tls_port=20443, admin_port=29901,
                              ext_proc_ports=[50061, 50062], mock_port=28080,
                              upstreams={"openai": "https://api.openai.com"}, var_dir=workdir / "var")
    out = workdir / "rendered.yaml"
    out.write_text(yaml.safe_dump(cfg))
    res = _validate(out, workdir)
    assert res.returncode == 0, res.stderr[-3000:]


def test_broken_config_is_rejected(workdir):
    cfg = yaml.safe_load((REPO / "envoy" / "local.yaml").read_text())
    cfg["static_resources"]["clusters"][0]["no_such_field"] = 1
    out = workdir / "broken.yaml"
    out.write_text(yaml.safe_dump(cfg))
    assert _validate(out, workdir).returncode != 0


def test_ext_proc_filter_fails_closed_in_every_config():
    for path in CONFIGS:
        text = path.read_text()
        if "envoy.filters.http.ext_proc" in text:
            assert "failure_mode_allow: false" in text, path.name
            assert "FULL_DUPLEX_STREAMED" in text and "response_trailer_mode: SEND" in text, path.name


def test_compose_envoy_config_is_in_step_with_local_and_validates(workdir):
    from ext_proc.cli.compose import compose_envoy_config

    committed = yaml.safe_load((REPO / "deploy" / "compose" / "envoy.yaml").read_text())
    assert committed == compose_envoy_config(REPO / "envoy" / "local.yaml"), \
        "regenerate with: python -m ext_proc.cli.compose"
    # Validate with the TLS material where the compose file mounts it, relative to a scratch root.
    cfg = yaml.safe_load((REPO / "deploy" / "compose" / "envoy.yaml").read_text())
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            ts = chain.get("transport_socket")
            if ts:
                for cert in ts["typed_config"]["common_tls_context"]["tls_certificates"]:
                    cert["certificate_chain"]["filename"] = str(workdir / "var/dev/tls/server.crt")
                    cert["private_key"]["filename"] = str(workdir / "var/dev/tls/server.key")
    out = workdir / "compose.yaml"
    out.write_text(yaml.safe_dump(cfg))
    res = _validate(out, workdir)
    assert res.returncode == 0, res.stderr[-3000:]
