"""Private key material on disk: created owner-only (0600) from the first byte, never widened.
Shared by the audit signer, the dev identity issuer, the dev TLS material and the secrets that
config creates on first use."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to a new 0600 file; with `replace`, overwrite one that exists. Without it an
    existing file is an error (O_EXCL), so two processes starting at once cannot both create it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_or_create_ed25519(path: str | Path, what: str = "key") -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM at `path`, generated there on first use."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the {what} must be Ed25519")
        return key
    key = Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return key
