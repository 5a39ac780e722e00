"""Dev material for the local stack, generated once under var/ (git-ignored): the audit signing
key, the redaction hash key, a dev JWT issuer with its JWKS, a self-signed TLS certificate, and a
dev client CA (var/dev/tls/ca.crt, what envoy/edge.yaml verifies client certificates against)
with one client certificate it signed (client.crt / client.key) to try mTLS with."""

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
    now = now or dt.datetime.now(dt.UTC)
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


DEV_CLIENT_URI = "spiffe://ledgergate.local/dev-client"


def ensure_client_ca(tls_dir: Path, now: dt.datetime | None = None) -> tuple[Path, Path, Path]:
    """A dev CA for client certificates (ca.crt, ca.key) and one client certificate it signed
    (client.crt, client.key; URI SAN spiffe://ledgergate.local/dev-client), valid 90 days.
    `curl --cert client.crt --key client.key --cacert server.crt https://127.0.0.1:10443/...`"""
    ca_crt, ca_key = tls_dir / "ca.crt", tls_dir / "ca.key"
    client_crt, client_key = tls_dir / "client.crt", tls_dir / "client.key"
    if all(p.exists() for p in (ca_crt, ca_key, client_crt, client_key)):
        return ca_crt, client_crt, client_key
    now = now or dt.datetime.now(dt.UTC)
    ca_priv, client_priv = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledgergate dev client CA")])
    validity = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=90))
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name).public_key(ca_priv.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_priv, hashes.SHA256()))
    client = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-client")]))
              .issuer_name(ca_name).public_key(client_priv.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(validity[0]).not_valid_after(validity[1])
              .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEV_CLIENT_URI)]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .sign(ca_priv, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    for key, priv in ((ca_key, ca_priv), (client_key, client_priv)):
        _write_private(key, priv.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    client_crt.write_bytes(client.public_bytes(pem))
    ca_crt.write_bytes(ca.public_bytes(pem))
    return ca_crt, client_crt, client_key


def ensure_dev_material(var_dir: Path) -> None:
    from ext_proc.audit.log import load_or_create_signing_key
    from ext_proc.identity.dev import generate_dev_issuer
    from ext_proc.server.config import load_or_create_secret

    var_dir.mkdir(parents=True, exist_ok=True)
    generate_dev_issuer(var_dir / "dev")
    load_or_create_signing_key(var_dir / "keys" / "audit-signing.pem")
    load_or_create_secret(var_dir / "keys" / "redaction-hash.key")
    ensure_tls_cert(var_dir / "dev" / "tls")
    ensure_client_ca(var_dir / "dev" / "tls")


def _owner(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    uid, _, gid = spec.partition(":")
    return int(uid), int(gid or uid)


def hand_over(root: Path, owner: tuple[int, int]) -> None:
    """chown -R ROOT to OWNER: the init container runs as root and the services that read the
    material do not (ledgergate as UID 10001, Envoy as its image's envoy user)."""
    import os

    for path in [root, *root.rglob("*")]:
        if (path.stat().st_uid, path.stat().st_gid) != owner:
            os.chown(path, *owner)


def run_dev_material(var_dir: str, owner: str | None, tls_dir: str | None, tls_owner: str | None) -> int:
    """`ledgergate dev-material`: what docker-compose.yml's init service runs (and what `up` does
    first): everything under VAR, a copy of the TLS files Envoy reads under TLS_DIR, each tree
    handed to the user that reads it. Idempotent: existing material is kept."""
    import shutil

    var = Path(var_dir).resolve()
    ensure_dev_material(var)
    if tls_dir:
        out = Path(tls_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        for name in ("server.crt", "server.key", "ca.crt"):
            src, dst = var / "dev" / "tls" / name, out / name
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                shutil.copyfile(src, dst)
            dst.chmod(0o600 if name.endswith(".key") else 0o644)
        tls_ids = _owner(tls_owner)
        if tls_ids:
            hand_over(out, tls_ids)
    var_ids = _owner(owner)
    if var_ids:
        hand_over(var, var_ids)
    print(f"dev material ready in {var}" + (f" (Envoy TLS files in {Path(tls_dir).resolve()})" if tls_dir else ""))
    return 0
