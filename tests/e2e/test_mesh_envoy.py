"""Each mesh flavour without a cluster: the real Envoy runs a bootstrap shaped like the one that
mesh generates (tests/mesh_shapes.py builds it from the resources in deploy/, with the filter where
the EnvoyFilter / EnvoyExtensionPolicy puts it, TLS originated to the provider as the
DestinationRule / Backend says), the official SDKs call through it to the mock provider, and
ledgergate (the stack's ext_proc worker) decides. Fail closed included: with the processor down the
client gets a 5xx and the provider sees nothing."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from ext_proc.cli import mesh
from ext_proc.cli.up import _wait_envoy_ready, envoy_binary
from tests import mesh_shapes
from tests.support import free_ports, start_stack, unique_marker

pytestmark = pytest.mark.e2e

PROVIDERS = list(mesh.PROVIDER_HOSTS.values())   # every provider host the mesh manifests name


def _egress_identity() -> dict:
    """The identity section the egress-gateway overlay ships (SPIFFE IDs from the mesh)."""
    (cm,) = mesh_shapes.docs(mesh_shapes.DEPLOY / "istio" / "egress-gateway" / "configmap-ledgergate-mesh-identity.yaml")
    return yaml.safe_load(cm["data"]["ledgergate.yaml"])["identity"]["mtls"]


WORKLOAD = next(iter(_egress_identity()["roles_by_san"]))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """ledgergate with the dev issuer (tokens) and the egress overlay's mesh identities; a PKI."""
    tmp = tmp_path_factory.mktemp("mesh")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"identity": {"mtls": _egress_identity()}}))
    stack = start_stack(tmp, "--config", str(cfg))
    pki = mesh_shapes.make_pki(tmp / "pki", PROVIDERS, WORKLOAD)
    yield stack, pki, tmp
    stack.stop()


class Envoy:
    def __init__(self, cfg: dict, workdir: Path, admin_port: int):
        self.path = workdir / f"envoy-{admin_port}.yaml"
        self.path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = workdir / f"envoy-{admin_port}.log"
        self.proc = subprocess.Popen([envoy_binary(), "-c", str(self.path), "--log-level", "warn", "--concurrency", "1",
                                      "--base-id", str(admin_port)],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        try:
            _wait_envoy_ready(admin_port, time.time() + 30, self.proc)
        except SystemExit as exc:
            self.stop()
            raise AssertionError(f"{exc}:\n{self.log.read_text()[-3000:]}") from None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ports(stack, ext_proc_port: int | None = None) -> mesh_shapes.Ports:
    admin, listener, provider = free_ports(3)
    return mesh_shapes.Ports(admin, listener, provider, stack.mock_port,
                             ext_proc_port if ext_proc_port is not None else stack.ext_proc_port)


def _dead_port() -> int:
    (port,) = free_ports(1)   # nothing listens there: the processor is down
    return port


@contextmanager
def _processor_down(mesh, shape):
    """The flavour's Envoy with its ext_proc cluster pointing where nothing listens."""
    stack, pki, tmp = mesh
    ports = _ports(stack, ext_proc_port=_dead_port())
    envoy = Envoy(shape(ports, pki), tmp, ports.admin)
    try:
        yield stack, pki, ports
    finally:
        envoy.stop()


def _upstream_requests(stack, marker: str) -> list[dict]:
    return [r for r in stack.mock_requests() if marker in r["body"]]


def _records_for(stack, request_id: str) -> dict[str, dict]:
    return {r["kind"]: r for r in stack.audit_records() if r.get("request_id") == request_id}


def _one_upstream(stack, marker: str) -> dict:
    reqs = _upstream_requests(stack, marker)
    assert len(reqs) == 1, f"{len(reqs)} upstream requests carry {marker}"
    return reqs[0]


def _assert_audited(stack, upstream: dict) -> dict:
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    records = _records_for(stack, headers["x-request-id"])
    assert {"decision", "outcome"} <= set(records), records.keys()
    assert records["decision"]["identity"] is not None
    return records


# --- Istio sidecar -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sidecar(mesh):
    stack, pki, tmp = mesh
    (other_port,) = [stack.mock_port]   # another mesh service on port 80, plain HTTP: the mock itself
    ports = _ports(stack)
    envoy = Envoy(mesh_shapes.istio_sidecar(ports, pki, extra_hosts={"catalog.shop.svc.cluster.local": other_port}),
                  tmp, ports.admin)
    yield stack, ports
    envoy.stop()


def _sidecar_openai(ports, token: str) -> openai.OpenAI:
    # The SDK's default host and path (OPENAI_BASE_URL=http://api.openai.com/v1); the connection
    # goes to the pod's istio-proxy, which is what iptables interception does in the pod.
    return openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/v1", api_key=token, max_retries=0, timeout=30,
                         default_headers={"Host": "api.openai.com"})


def test_istio_sidecar_sdks_go_through_ledgergate_with_tls_originated(sidecar):
    stack, ports = sidecar
    token = stack.token()
    marker = unique_marker("sidecar")
    reply = _sidecar_openai(ports, token).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {marker}"}])
    assert reply.choices[0].message.content == f"You said: hello {marker}"
    upstream = _one_upstream(stack, marker)
    # TLS was originated to the provider's name (the frontend only accepts SNI api.openai.com &c.),
    # the Host is the provider's, the client's credential stayed behind.
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    assert headers["host"] == "api.openai.com"
    assert "authorization" not in headers
    _assert_audited(stack, upstream)
    # Streaming (the response body in FULL_DUPLEX_STREAMED) and the Anthropic SDK.
    stream = _sidecar_openai(ports, token).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True)
    assert "".join((c.choices[0].delta.content or "") for c in stream if c.choices) == "You said: stream me please"
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{ports.listener}", api_key=token, max_retries=0,
                                 timeout=30, default_headers={"Host": "api.anthropic.com"})
    msg = claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                 messages=[{"role": "user", "content": "hi claude"}])
    assert msg.content[0].text == "You said: hi claude"


def test_istio_sidecar_mistral_keeps_its_route_prefix_through_the_filter(sidecar):
    """A provider whose paths are another's (Mistral's chat is OpenAI's path): the SDK's base URL
    carries ledgergate's route prefix, the filter classifies the prefixed path, the route strips
    it; without the prefix nothing reaches the provider."""
    stack, ports = sidecar
    marker = unique_marker("mistral")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/mistral/v1", api_key=stack.token(),
                           max_retries=0, timeout=30, default_headers={"Host": "api.mistral.ai"})
    reply = client.chat.completions.create(model="mistral-small-latest",
                                           messages=[{"role": "user", "content": f"hello {marker}"}])
    assert reply.choices[0].message.content == f"You said: hello {marker}"
    upstream = _one_upstream(stack, marker)
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    assert upstream["path"] == "/v1/chat/completions" and headers["host"] == "api.mistral.ai"
    decision = _assert_audited(stack, upstream)["decision"]
    assert decision["route"]["surface"] == "mistral.chat_completions" and decision["provider"] == "mistral"
    unprefixed = unique_marker("mistralbare")
    r = httpx.post(f"http://127.0.0.1:{ports.listener}/v1/chat/completions", timeout=30,
                   headers={"Host": "api.mistral.ai", "Authorization": f"Bearer {stack.token()}"},
                   json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": unprefixed}]})
    assert r.status_code == 404
    assert _upstream_requests(stack, unprefixed) == []


def test_istio_sidecar_refuses_an_unverified_caller_before_the_provider(sidecar):
    stack, ports = sidecar
    marker = unique_marker("sidecarauth")
    with pytest.raises(openai.AuthenticationError):
        _sidecar_openai(ports, "not-a-token").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
    assert _upstream_requests(stack, marker) == []


def test_istio_sidecar_leaves_other_mesh_services_on_the_same_port_alone(sidecar):
    # The outbound port-80 listener carries every port-80 service of the mesh; the filter is on
    # for the provider hosts only, so other services are neither refused nor audited.
    stack, ports = sidecar
    marker = unique_marker("catalog")
    r = httpx.post(f"http://127.0.0.1:{ports.listener}/v1/chat/completions", timeout=30,
                   headers={"Host": "catalog.shop.svc.cluster.local"},
                   json={"model": "m", "messages": [{"role": "user", "content": marker}]})
    assert r.status_code == 200
    upstream = _one_upstream(stack, marker)
    request_id = {k.lower(): v for k, v in upstream["headers"].items()}["x-request-id"]
    assert _records_for(stack, request_id) == {}


def test_istio_sidecar_fails_closed_when_ledgergate_is_down(mesh):
    with _processor_down(mesh, mesh_shapes.istio_sidecar) as (stack, pki, ports):
        marker = unique_marker("sidecardown")
        with pytest.raises(openai.InternalServerError) as ei:
            _sidecar_openai(ports, stack.token()).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
        assert ei.value.status_code >= 500
        assert _upstream_requests(stack, marker) == []


# --- Istio egress gateway ------------------------------------------------------------------------

class _SidecarToGateway(httpx.HTTPTransport):
    """The calling workload's sidecar: Istio mutual TLS to the gateway with the workload's
    certificate and the SNI its DestinationRule subset names for the provider."""

    def __init__(self, ctx: ssl.SSLContext, sni: dict[str, str]):
        super().__init__(verify=ctx)
        self.sni = sni

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions["sni_hostname"] = self.sni[request.headers["host"]]
        return super().handle_request(request)


def _egress_sni() -> dict[str, str]:
    """Provider host -> the SNI a sidecar sends to the gateway for it: the VirtualService's mesh
    route names a subset, the subset's TLS settings name the SNI."""
    overlay = mesh_shapes.DEPLOY / "istio" / "egress-gateway"
    (dr,) = mesh_shapes.docs(overlay / "destinationrule-egressgateway.yaml")
    subset_sni = {s["name"]: s["trafficPolicy"]["portLevelSettings"][0]["tls"]["sni"] for s in dr["spec"]["subsets"]}
    out = {}
    for vs in mesh_shapes.docs(overlay / "virtualservice-providers.yaml"):
        (host,) = vs["spec"]["hosts"]
        (to_gateway,) = [h for h in vs["spec"]["http"] if any("mesh" in m.get("gateways", []) for m in h["match"])]
        out[host] = subset_sni[to_gateway["route"][0]["destination"]["subset"]]
    return out


def _workload_client(ports, pki, *, cert: bool = True, sni: dict[str, str] | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False   # the gateway's certificate names its Service, the SNI the provider
    if cert:
        ctx.load_cert_chain(str(pki.workload_cert), str(pki.workload_key))
    return httpx.Client(transport=_SidecarToGateway(ctx, _egress_sni() if sni is None else sni), timeout=30)


@pytest.fixture(scope="module")
def egress(mesh):
    stack, pki, tmp = mesh
    ports = _ports(stack)
    envoy = Envoy(mesh_shapes.istio_egress_gateway(ports, pki), tmp, ports.admin)
    yield stack, pki, ports
    envoy.stop()


def test_istio_egress_gateway_takes_the_callers_spiffe_identity(egress):
    stack, pki, ports = egress
    marker = unique_marker("egress")
    client = openai.OpenAI(base_url=f"https://127.0.0.1:{ports.listener}/v1", api_key="unused", max_retries=0,
                           http_client=_workload_client(ports, pki), default_headers={"Host": "api.openai.com"})
    # No bearer token: the identity is the workload's SPIFFE ID from the mesh certificate.
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {marker}"}],
        extra_headers={"Authorization": openai.Omit()})
    assert reply.parse().choices[0].message.content == f"You said: hello {marker}"
    upstream = _one_upstream(stack, marker)
    assert {k.lower(): v for k, v in upstream["headers"].items()}["host"] == "api.openai.com"
    identity = _assert_audited(stack, upstream)["decision"]["identity"]
    assert WORKLOAD in json.dumps(identity)
    # Streaming through the gateway too.
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "stream me please"}],
                                            extra_headers={"Authorization": f"Bearer {stack.token()}"})
    assert "".join((c.choices[0].delta.content or "") for c in stream if c.choices) == "You said: stream me please"


def test_istio_egress_gateway_refuses_a_caller_without_a_mesh_certificate_or_a_provider_sni(egress):
    stack, pki, ports = egress
    with pytest.raises(httpx.HTTPError):
        _workload_client(ports, pki, cert=False).post(
            f"https://127.0.0.1:{ports.listener}/v1/chat/completions", headers={"Host": "api.openai.com"},
            json={"model": "m", "messages": []})
    # A server name the Gateway does not serve matches no filter chain.
    with pytest.raises(httpx.HTTPError):
        _workload_client(ports, pki, sni={"api.openai.com": "example.com"}).post(
            f"https://127.0.0.1:{ports.listener}/v1/chat/completions", headers={"Host": "api.openai.com"},
            json={"model": "m", "messages": []})


def test_istio_egress_gateway_fails_closed_when_ledgergate_is_down(mesh):
    with _processor_down(mesh, mesh_shapes.istio_egress_gateway) as (stack, pki, ports):
        marker = unique_marker("egressdown")
        r = _workload_client(ports, pki).post(
            f"https://127.0.0.1:{ports.listener}/v1/chat/completions", headers={"Host": "api.openai.com"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]})
        assert r.status_code >= 500
        assert _upstream_requests(stack, marker) == []


# --- Envoy Gateway -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def envoy_gateway(mesh):
    stack, pki, tmp = mesh
    ports = _ports(stack)
    envoy = Envoy(mesh_shapes.envoy_gateway(ports, pki, mesh_shapes.eg_translate), tmp, ports.admin)
    yield stack, ports
    envoy.stop()


def test_envoy_gateway_sdks_go_through_ledgergate(envoy_gateway):
    stack, ports = envoy_gateway
    token = stack.token()
    marker = unique_marker("eg")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/v1", api_key=token, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": f"hello {marker}"}])
    assert reply.choices[0].message.content == f"You said: hello {marker}"
    upstream = _one_upstream(stack, marker)
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    assert headers["host"] == "api.openai.com" and "authorization" not in headers
    _assert_audited(stack, upstream)
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "stream me please"}])
    assert "".join((c.choices[0].delta.content or "") for c in stream if c.choices) == "You said: stream me please"
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{ports.listener}", api_key=token, max_retries=0, timeout=30)
    with claude.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                                messages=[{"role": "user", "content": "stream claude"}]) as s:
        assert "".join(s.text_stream) == "You said: stream claude"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/v1", api_key="bad", max_retries=0,
                      timeout=30).chat.completions.create(model="gpt-4o-mini",
                                                          messages=[{"role": "user", "content": "x"}])


def test_envoy_gateway_fails_closed_when_ledgergate_is_down(mesh):
    def shape(ports, pki):
        return mesh_shapes.envoy_gateway(ports, pki, mesh_shapes.eg_translate)

    with _processor_down(mesh, shape) as (stack, pki, ports):
        marker = unique_marker("egdown")
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/v1", api_key=stack.token(), max_retries=0,
                          timeout=30).chat.completions.create(model="gpt-4o-mini",
                                                              messages=[{"role": "user", "content": marker}])
        assert _upstream_requests(stack, marker) == []


def test_envoy_gateway_with_the_patch_policy_runs_the_exact_source_filter(mesh):
    # The EnvoyPatchPolicy overlay (mutation_rules, max_message_timeout, the gRPC timeout) applied
    # the way EG applies it; Envoy accepts the result and the SDK goes through it.
    stack, pki, tmp = mesh
    ports = _ports(stack)
    (epp,) = mesh_shapes.docs(mesh_shapes.DEPLOY / "envoy-gateway-with-patch-policy" / "envoypatchpolicy.yaml")
    cfg = mesh_shapes.apply_envoy_patch_policy(mesh_shapes.envoy_gateway(ports, pki, mesh_shapes.eg_translate), epp)
    envoy = Envoy(cfg, tmp, ports.admin)
    try:
        marker = unique_marker("egpatched")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports.listener}/v1", api_key=stack.token(), max_retries=0,
                               timeout=30)
        reply = client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": f"hello {marker}"}])
        assert reply.choices[0].message.content == f"You said: hello {marker}"
        _assert_audited(stack, _one_upstream(stack, marker))
    finally:
        envoy.stop()
