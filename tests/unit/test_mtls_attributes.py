"""From Envoy's attribute message to an mTLS identity: the Struct Envoy puts under
attributes["envoy.filters.http.ext_proc"] (strings, a bool for connection.mtls, numbers) is turned
into plain strings by server/messages.attributes_of, and the resolver takes the identity from
those only. The same path runs end to end with a real certificate in tests/e2e/test_mtls_e2e.py."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from ext_proc.identity import IdentityError
from ext_proc.server.messages import attributes_of
from tests.unit.test_identity_resolver import MTLS, NOW, make_resolver

SAN = "spiffe://acme/ns/app/sa/x"
DIGEST = "0f" * 32


def _request(fields: dict) -> pb.ProcessingRequest:
    attrs = struct_pb2.Struct()
    attrs.update(fields)
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    req.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return req


def test_envoys_attribute_struct_becomes_plain_strings():
    req = _request({"connection.mtls": True, "connection.uri_san_peer_certificate": SAN,
                    "connection.sha256_peer_certificate_digest": DIGEST, "request.id": "r-1",
                    "source.port": 43512, "weight": 0.5, "unset": None})
    assert attributes_of(req) == {"connection.mtls": "true", "connection.uri_san_peer_certificate": SAN,
                                  "connection.sha256_peer_certificate_digest": DIGEST, "request.id": "r-1",
                                  "source.port": "43512", "weight": "0.5"}
    assert attributes_of(_request({"connection.mtls": False}))["connection.mtls"] == "false"
    assert attributes_of(pb.ProcessingRequest(request_headers=pb.HttpHeaders())) == {}
    # Attributes of another filter's namespace are not ours to read.
    other = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    other.attributes["some.other.filter"].CopyFrom(struct_pb2.Struct(fields={
        "connection.uri_san_peer_certificate": struct_pb2.Value(string_value=SAN)}))
    assert attributes_of(other) == {}


def test_the_identity_comes_from_the_converted_attributes(tmp_path, keys):
    r = make_resolver(tmp_path, keys, mtls=MTLS)
    ident = r.resolve_sync({}, attributes_of(_request({
        "connection.mtls": True, "connection.uri_san_peer_certificate": SAN,
        "connection.sha256_peer_certificate_digest": DIGEST})), NOW)
    assert (ident.auth_method, ident.subject, ident.roles, ident.credential_id) == (
        "mtls", SAN, ("service",), "x509:" + DIGEST[:16])


@pytest.mark.parametrize("fields", [
    {"connection.mtls": False, "connection.uri_san_peer_certificate": SAN,
     "connection.sha256_peer_certificate_digest": DIGEST},     # Envoy says: not an mTLS connection
    {"connection.mtls": True, "connection.sha256_peer_certificate_digest": DIGEST},   # no SAN
    {"connection.mtls": True, "connection.uri_san_peer_certificate": SAN},           # no digest
    {"connection.mtls": True, "connection.uri_san_peer_certificate": "",
     "connection.sha256_peer_certificate_digest": DIGEST},
])
def test_without_a_verified_certificate_there_is_no_mtls_identity(tmp_path, keys, fields):
    r = make_resolver(tmp_path, keys, mtls=MTLS)
    with pytest.raises(IdentityError) as err:
        r.resolve_sync({}, attributes_of(_request(fields)), NOW)
    assert err.value.reason == "missing_credential"
