"""Fixtures several unit-test modules share (each used to import them from another test module)."""

from __future__ import annotations

import time

import pytest

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from tests.support import REPO


@pytest.fixture
async def runtime(tmp_path):
    """The server's Runtime on the default policy, its dev issuer and file audit sink under tmp_path."""
    var = tmp_path / "var"
    ensure_dev_material(var)
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def token(tmp_path):
    """A dev JWT the `runtime` fixture accepts (alice, developer, tenant acme)."""
    return mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())


@pytest.fixture(scope="module")
def keys():
    """Ed25519, RSA and EC signing keys plus an attacker's key, once per module (RSA is slow)."""
    from tests.unit.test_identity_resolver import Keys

    return Keys()
