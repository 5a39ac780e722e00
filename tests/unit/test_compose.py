"""docker-compose.yml works from a fresh clone as written. No Docker engine here, so: its
semantics are checked from the YAML (the init service runs first and hands its volumes to the
users that read them; every path a service reads is on a volume init fills), and the init
service's own command is run outside Docker against a scratch directory standing in for the
volumes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENVOY_UID = 101            # the envoyproxy/envoy image's `envoy` user


def _mounts(service: str) -> dict[str, str]:
    """container path -> source (a named volume, or a ./ path)."""
    out = {}
    for v in SERVICES[service].get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def _image_user() -> tuple[int, int]:
    m = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert m, "the Dockerfile names its user as UID:GID"
    return int(m.group(1)), int(m.group(2))


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_init_runs_first_as_root_and_the_services_wait_for_it():
    init = SERVICES["init"]
    assert init["user"] == "0:0" and init["command"][0] == "dev-material"
    for svc in ("ledgergate", "envoy"):
        assert SERVICES[svc]["depends_on"]["init"] == {"condition": "service_completed_successfully"}


def test_init_hands_each_volume_to_the_user_that_reads_it():
    init_cmd = SERVICES["init"]["command"]
    init_mounts = _mounts("init")
    var_volume = init_mounts[_flag(init_cmd, "--var-dir")]
    tls_volume = init_mounts[_flag(init_cmd, "--tls-dir")]
    assert _flag(init_cmd, "--owner") == "{}:{}".format(*_image_user())
    assert _flag(init_cmd, "--tls-owner").split(":")[0] == str(ENVOY_UID)
    assert _mounts("ledgergate")["/app/var"] == var_volume
    envoy_tls_mount = next(t for t, s in _mounts("envoy").items() if s == tls_volume)
    # Every file Envoy reads is on the volume init fills.
    envoy_cfg = (REPO / "deploy" / "compose" / "envoy.yaml").read_text()
    for filename in re.findall(r"filename: (\S+)", envoy_cfg):
        assert filename.startswith(envoy_tls_mount + "/"), filename
    # Named volumes only (no host bind of var/): host ownership and 0600 modes cannot interfere.
    declared = set(COMPOSE.get("volumes") or {})
    assert {var_volume, tls_volume} <= declared
    assert not any(s.startswith((".", "/")) and t.startswith("/app/var") for t, s in _mounts("ledgergate").items())


def test_the_init_command_outside_docker_makes_everything_the_services_read(tmp_path):
    """The init command with the volumes as scratch directories (owner: ourselves, since only
    root may give files away), then every path the compose configs name must exist."""
    init_cmd = SERVICES["init"]["command"]
    me = f"{os.getuid()}:{os.getgid()}"
    var_dir, tls_dir = tmp_path / "app-var", tmp_path / "envoy-tls"
    cmd = list(init_cmd)
    cmd[cmd.index("--var-dir") + 1] = str(var_dir)
    cmd[cmd.index("--tls-dir") + 1] = str(tls_dir)
    cmd[cmd.index("--owner") + 1] = me
    cmd[cmd.index("--tls-owner") + 1] = me
    for _ in range(2):     # idempotent: a second `docker compose up` keeps the material
        res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", *cmd], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
    jwks_before = (var_dir / "dev" / "jwks.json").read_text()
    lg = yaml.safe_load((REPO / "deploy" / "compose" / "ledgergate.yaml").read_text())
    for path in (lg["identity"]["issuers"][0]["jwks_file"], lg["audit"]["signing_key"],
                 lg["classify"]["redaction_key_file"]):
        assert path.startswith("/app/var/")
        assert (var_dir / path[len("/app/var/"):]).is_file(), path
    envoy_cfg = (REPO / "deploy" / "compose" / "envoy.yaml").read_text()
    for filename in re.findall(r"filename: (\S+)", envoy_cfg):
        local = tls_dir / Path(filename).name
        assert local.is_file(), filename
        if filename.endswith(".key"):
            assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert (var_dir / "dev" / "jwks.json").read_text() == jwks_before
    # A token minted from that volume, as the compose comment says.
    tok = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "token", "--var-dir", str(var_dir),
                          "--sub", "alice", "--roles", "developer"], capture_output=True, text=True, timeout=60)
    assert tok.returncode == 0 and tok.stdout.count(".") == 2


def test_the_dev_client_ca_signs_the_dev_client_certificate(tmp_path):
    from cryptography import x509

    from ext_proc.cli.devmaterial import DEV_CLIENT_URI, ensure_dev_material

    ensure_dev_material(tmp_path)
    tls = tmp_path / "dev" / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((tls / "client.crt").read_bytes())
    client.verify_directly_issued_by(ca)
    sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [DEV_CLIENT_URI]
