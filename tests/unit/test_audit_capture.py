"""Encrypted capture and signed checkpoints."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidTag

from ext_proc.audit.capture import open_capture, seal_capture
from tests.support import REPO
from tests.unit.test_audit_chain import write_log


def test_capture_round_trip_is_bound_to_its_request():
    key = os.urandom(32)
    env = seal_capture(key, "k1", b"my card 4111111111111111", b"req-1")
    assert "4111" not in str(env) and env["key_id"] == "k1"
    assert open_capture(key, env, b"req-1") == b"my card 4111111111111111"
    with pytest.raises(InvalidTag):
        open_capture(key, env, b"req-2")  # moved to another record
    with pytest.raises(InvalidTag):
        open_capture(os.urandom(32), env, b"req-1")
    with pytest.raises(ValueError):
        seal_capture(b"short", "k", b"x", b"")


def test_signed_checkpoint_verifies(tmp_path):
    d = tmp_path / "audit"
    write_log(d, n=5)
    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "checkpoint", str(d),
                          "--sign", str(tmp_path / "k.pem")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0
    body, _, sigline = res.stdout.partition("\n\n")
    assert body.splitlines()[1] == "7"  # genesis + 5 + closing checkpoint
    from ext_proc.audit.log import load_or_create_signing_key

    pub = load_or_create_signing_key(tmp_path / "k.pem").public_key()
    # C2SP signed note: the signature line carries a 4-byte key hash, then the Ed25519 signature.
    pub.verify(base64.b64decode(sigline.split()[-1])[4:], (body + "\n").encode())
