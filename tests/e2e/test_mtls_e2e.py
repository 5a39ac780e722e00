"""mTLS identity with a real client certificate through the real Envoy: Envoy verifies the
certificate against a trusted CA (require_client_certificate, as envoy/edge.yaml does), sends its
SAN and digest as ext_proc connection attributes, and ledgergate takes the identity from those
attributes only. A certificate from another CA never gets a TLS session, and a client-cert header
on the plain listener is not an identity."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import REPO, start_stack, unique_marker

pytestmark = pytest.mark.e2e

SAN = "spiffe://acme/ns/app/sa/batch"


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _client_cert(ca_key, ca_cert, san: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_pair(directory, name, key, cert):
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(_key_pem(key))
    return crt, pem


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtls")
    pki = tmp / "pki"
    pki.mkdir()
    ca_key, ca_cert = _ca("ledgergate test client CA")
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    good_key, good_cert = _client_cert(ca_key, ca_cert, SAN)
    rogue_ca_key, rogue_ca_cert = _ca("someone else's CA")
    rogue_key, rogue_cert = _client_cert(rogue_ca_key, rogue_ca_cert, SAN)
    certs = {"good": _write_pair(pki, "good", good_key, good_cert),
             "rogue": _write_pair(pki, "rogue", rogue_key, rogue_cert),
             "good_der_sha256": hashlib.sha256(good_cert.public_bytes(serialization.Encoding.DER)).hexdigest()}

    # The local config's TLS listener, requiring a client certificate from the test CA.
    envoy_cfg = yaml.safe_load((REPO / "envoy" / "local.yaml").read_text())
    for listener in envoy_cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            ts = chain.get("transport_socket")
            if ts:
                ts["typed_config"]["require_client_certificate"] = True
                ts["typed_config"]["common_tls_context"]["validation_context"] = {
                    "trusted_ca": {"filename": str(pki / "ca.crt")}}
    envoy_path = tmp / "envoy-mtls.yaml"
    envoy_path.write_text(yaml.safe_dump(envoy_cfg, sort_keys=False))
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"identity": {"mtls": {"enabled": True, "roles_by_san": {SAN: ["developer"]},
                                                     "tenant_by_san": {SAN: "acme"}}}}))
    s = start_stack(tmp, "--config", str(cfg), "--envoy-config", str(envoy_path))
    yield s, certs
    s.stop()


def _tls_client(stack, cert_pair) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(stack.var_dir / "dev" / "tls" / "server.crt"))
    if cert_pair is not None:
        ctx.load_cert_chain(str(cert_pair[0]), str(cert_pair[1]))
    return httpx.Client(base_url=f"https://127.0.0.1:{stack.tls_port}", verify=ctx, timeout=30)


def _chat(marker: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]}


def test_a_verified_client_certificate_is_the_identity(mtls):
    s, certs = mtls
    marker = unique_marker("mtls")
    with _tls_client(s, certs["good"]) as c:
        r = c.post("/v1/chat/completions", json=_chat(marker))   # no Authorization header at all
    assert r.status_code == 200, r.text[:300]
    assert any(marker in x["body"] for x in s.mock_requests())
    (decision,) = [x for x in s.audit_records()
                   if x.get("request_id") == r.headers["x-request-id"] and x.get("kind") == "decision"]
    ident = decision["identity"]
    assert (ident["auth_method"], ident["subject"], ident["roles"], ident["tenant"]) == (
        "mtls", SAN, ["developer"], "acme")
    # The digest Envoy computed over the certificate Envoy verified (DER SHA-256), not a header's.
    assert ident["credential_id"] == "x509:" + certs["good_der_sha256"][:16]


def test_a_certificate_from_another_ca_gets_no_tls_session(mtls):
    s, certs = mtls
    marker = unique_marker("rogue")
    with _tls_client(s, certs["rogue"]) as c, pytest.raises(httpx.HTTPError):
        c.post("/v1/chat/completions", json=_chat(marker))
    with _tls_client(s, None) as c, pytest.raises(httpx.HTTPError):
        c.post("/v1/chat/completions", json=_chat(marker))
    assert not any(marker in x["body"] for x in s.mock_requests())


def test_a_client_certificate_header_on_the_plain_listener_is_not_an_identity(mtls):
    s, certs = mtls
    marker = unique_marker("spoof")
    spoof = {"x-forwarded-client-cert": f'By=spiffe://gw;Hash={certs["good_der_sha256"]};URI={SAN}',
             "x-ssl-client-s-dn": "CN=batch"}
    r = httpx.post(f"{s.base_url}/v1/chat/completions", json=_chat(marker), headers=spoof, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"]
    assert not any(marker in x["body"] for x in s.mock_requests())
