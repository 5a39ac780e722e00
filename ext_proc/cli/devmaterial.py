"""Dev material for the local stack, generated once under var/ (git-ignored): the audit signing
key, the redaction hash key, a dev JWT issuer with its JWKS, and a self-signed TLS certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ext_proc.keyfiles import write_private


def _write_private(path: Path, data: bytes) -> None:
    write_private(path, data, replace=True)


def ensure_tls_cert(tls_dir: Path, now: dt.datetime | None = None) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for localhost / 127.0.0.1, valid 90 days."""
    crt, key = tls_dir / "server.crt", tls_dir / "server.key"
    if crt.exists() and key.exists():
        return crt, key
    now = now or dt.datetime.now(dt.timezone.utc)
    priv = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(priv, hashes.SHA256())
    )
    _write_private(key, priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key


def ensure_dev_material(var_dir: Path) -> None:
    from ext_proc.audit.log import load_or_create_signing_key
    from ext_proc.identity.dev import generate_dev_issuer
    from ext_proc.server.config import load_or_create_secret

    var_dir.mkdir(parents=True, exist_ok=True)
    generate_dev_issuer(var_dir / "dev")
    load_or_create_signing_key(var_dir / "keys" / "audit-signing.pem")
    load_or_create_secret(var_dir / "keys" / "redaction-hash.key")
    ensure_tls_cert(var_dir / "dev" / "tls")
