"""Envoy bootstraps shaped like the ones each mesh generates, built from the resources in deploy/
(not from ext_proc.cli.mesh), so the tests run the filter where the mesh would put it:

- Istio sidecar: the outbound listener of the ServiceEntry port ("0.0.0.0_80", route config "80",
  one virtual host "<host>:80" per host), Istio's upstream-Envoy HTTP filters, clusters
  "outbound|80||<host>" that originate TLS as the DestinationRule says; then the EnvoyFilter's
  patches applied with Istio's semantics for the operations it uses.
- Istio egress gateway: the gateway listener of the Gateway's server (ISTIO_MUTUAL: a client
  certificate from the mesh CA is required), the VirtualService's routes to the provider
  clusters, then the EnvoyFilter.
- Envoy Gateway: what EG v1.9 translates the Gateway, HTTPRoutes, Backends and the
  EnvoyExtensionPolicy into (the ext_proc filter disabled in the HCM and enabled on each route of
  the targeted Gateway; one HTTP/2 cluster for the extProc backend).

What is NOT reproduced: xDS delivery, Istio's own filters (istio.metadata_exchange, istio.stats:
not in upstream Envoy), SDS, DNS. The mesh CA and the providers' "system CAs" are one test CA.
"""

from __future__ import annotations

import copy
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import REPO

DEPLOY = REPO / "deploy"
HCM = "envoy.filters.network.http_connection_manager"
EXT_PROC = "envoy.filters.http.ext_proc"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- a test PKI: the mesh CA / the providers' CA, and the certificates issued from it -------------

@dataclass
class Pki:
    ca: Path
    provider_cert: Path
    provider_key: Path
    gateway_cert: Path
    gateway_key: Path
    workload_cert: Path
    workload_key: Path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(out: Path, provider_hosts: list[str], workload_spiffe_id: str) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledgergate test mesh CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name: str, sans: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        crt_path, key_path = out / f"{name}.crt", out / f"{name}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return crt_path, key_path

    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    provider = leaf("provider", [x509.DNSName(h) for h in provider_hosts])
    gateway = leaf("gateway", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    workload = leaf("workload", [x509.UniformResourceIdentifier(workload_spiffe_id)])
    return Pki(out / "ca.crt", *provider, *gateway, *workload)


# --- Envoy building blocks ---------------------------------------------------------------------

def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name: str, port: int, *, http2: bool = False, tls: dict | None = None) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "2s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": _addr(port)}}]}]}}
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    if tls:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **tls}}
    return c


def origination_tls(sni: str, sans: list[str], ca: Path) -> dict:
    """An Istio DestinationRule `tls: {mode: SIMPLE, sni, subjectAltNames}` as Envoy gets it (the
    system CA bundle replaced by the test CA)."""
    return {"sni": sni, "common_tls_context": {"validation_context": {
        "trusted_ca": {"filename": str(ca)},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": s}} for s in sans]}}}


def hcm(stat_prefix: str, route_config: dict, http_filters: list[dict], **extra) -> dict:
    return {"name": HCM, "typed_config": {"@type": HCM_TYPE, "stat_prefix": stat_prefix,
                                          "route_config": route_config, "http_filters": http_filters, **extra}}


def _filter(name: str, type_url: str) -> dict:
    return {"name": name, "typed_config": {"@type": type_url}}


ROUTER = _filter("envoy.filters.http.router", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
# The upstream-Envoy part of Istio's outbound/gateway HTTP filter chain (Istio adds its own
# metadata-exchange and stats filters, which upstream Envoy does not have).
ISTIO_HTTP_FILTERS = [
    _filter("envoy.filters.http.fault", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"),
    _filter("envoy.filters.http.cors", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"),
    ROUTER,
]


def provider_frontend(port: int, mock_port: int, pki: Pki, hosts: list[str]) -> tuple[dict, dict]:
    """Test plumbing, not part of any mesh: the providers' TLS endpoint (a certificate for their
    names, SNI required to be one of them) in front of the mock provider."""
    listener = {"name": "test-provider-tls", "address": _addr(port), "listener_filters": [{
        "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [{
        "filter_chain_match": {"server_names": hosts},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": str(pki.provider_cert)},
                                                          "private_key": {"filename": str(pki.provider_key)}}]}}},
        "filters": [hcm("test_provider", {"name": "provider", "virtual_hosts": [{
            "name": "provider", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "test-mock", "timeout": "0s"}}]}]},
            [copy.deepcopy(ROUTER)])]}]}
    return listener, static_cluster("test-mock", mock_port)


def bootstrap(admin_port: int, listeners: list[dict], clusters: list[dict]) -> dict:
    return {"admin": {"address": _addr(admin_port)},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


# --- Istio's EnvoyFilter semantics, for the patch operations the shipped EnvoyFilters use ---------

def _merge(dst: dict, src: dict) -> None:
    """Proto merge as Istio's MERGE does it: messages merge field by field, maps by key,
    repeated fields append, scalars replace."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k].extend(copy.deepcopy(v))
        else:
            dst[k] = copy.deepcopy(v)


def apply_envoyfilter(cfg: dict, envoyfilter: dict, listener_ports: dict[str, tuple[str, int]]) -> dict:
    """Apply the EnvoyFilter's patches to a static bootstrap. listener_ports maps a listener name
    to (patch context, mesh port) — what istiod knows about the listeners it generates. Every
    patch must apply somewhere: a patch that matches nothing is an error here (in Istio it is
    silently ignored, which is exactly the failure a test must catch)."""
    cfg = copy.deepcopy(cfg)
    res = cfg["static_resources"]
    for patch in envoyfilter["spec"]["configPatches"]:
        match, op, value = patch.get("match", {}), patch["patch"]["operation"], patch["patch"]["value"]
        applied = 0
        if patch["applyTo"] == "CLUSTER":
            assert op == "ADD", op
            res["clusters"].append(copy.deepcopy(value))
            applied = 1
        elif patch["applyTo"] in ("HTTP_FILTER", "VIRTUAL_HOST"):
            for lst in res["listeners"]:
                context, port = listener_ports.get(lst["name"], (None, None))
                if context is None or match.get("context", "ANY") not in ("ANY", context):
                    continue
                want_port = (match.get("listener") or match.get("routeConfiguration") or {}).get("portNumber")
                if want_port is not None and want_port != port:
                    continue
                for chain in lst["filter_chains"]:
                    for nf in chain["filters"]:
                        if nf["name"] != HCM:
                            continue
                        tc = nf["typed_config"]
                        if patch["applyTo"] == "HTTP_FILTER":
                            assert op == "INSERT_BEFORE", op
                            sub = match["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                            names = [f["name"] for f in tc["http_filters"]]
                            if sub in names:
                                tc["http_filters"].insert(names.index(sub), copy.deepcopy(value))
                                applied += 1
                        else:
                            assert op == "MERGE", op
                            for vh in tc["route_config"]["virtual_hosts"]:
                                if vh["name"] == match["routeConfiguration"]["vhost"]["name"]:
                                    _merge(vh, value)
                                    applied += 1
        else:
            raise AssertionError(f"applyTo {patch['applyTo']} is not reproduced here")
        assert applied, f"EnvoyFilter patch matched nothing: {patch['applyTo']} {match}"
    return cfg


def set_cluster_port(cfg: dict, name: str, port: int) -> None:
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
    ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    ep.pop("pipe", None)
    ep["socket_address"] = {"address": "127.0.0.1", "port_value": port}


# --- the three shapes --------------------------------------------------------------------------

@dataclass
class Ports:
    admin: int
    listener: int
    provider: int
    mock: int
    ext_proc: int


def istio_sidecar(ports: Ports, pki: Pki, *, extra_hosts: dict[str, int] | None = None) -> dict:
    """extra_hosts: other mesh services on the same port (name -> plain HTTP port), which share
    the outbound listener with the providers."""
    overlay = DEPLOY / "istio" / "sidecar"
    (se,) = docs(overlay / "serviceentry-providers.yaml")
    drs = {d["spec"]["host"]: d for d in docs(overlay / "destinationrule-providers.yaml")}
    (ef,) = docs(overlay / "envoyfilter-ext-proc.yaml")
    # A host with a VirtualService gets its routes (Istio: match uri prefix, rewrite uri ->
    # prefix_rewrite, after the filter); the others Istio's default route.
    vss = {vs["spec"]["hosts"][0]: vs for vs in docs(overlay / "virtualservice-route-prefixes.yaml")}
    (se_port,) = se["spec"]["ports"]
    port = se_port["number"]
    vhosts, clusters = [], []
    for host in se["spec"]["hosts"]:
        cluster = f"outbound|{port}||{host}"
        routes = [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]
        if host in vss:
            routes = [_vs_route(http, cluster) for http in vss[host]["spec"]["http"]]
        vhosts.append({"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"], "routes": routes})
        (pl,) = [p for p in drs[host]["spec"]["trafficPolicy"]["portLevelSettings"] if p["port"]["number"] == port]
        assert pl["tls"]["mode"] == "SIMPLE"
        clusters.append(static_cluster(cluster, ports.provider,
                                       tls=origination_tls(pl["tls"]["sni"], pl["tls"]["subjectAltNames"], pki.ca)))
    for name, plain_port in (extra_hosts or {}).items():
        cluster = f"outbound|{port}||{name}"
        vhosts.append({"name": f"{name}:{port}", "domains": [name, f"{name}:{port}"],
                       "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster}}]})
        clusters.append(static_cluster(cluster, plain_port))
    outbound = {"name": f"0.0.0.0_{port}", "address": _addr(ports.listener), "filter_chains": [{"filters": [
        hcm(f"outbound_0.0.0.0_{port}", {"name": str(port), "virtual_hosts": vhosts},
            copy.deepcopy(ISTIO_HTTP_FILTERS), use_remote_address=False)]}]}
    frontend, mock = provider_frontend(ports.provider, ports.mock, pki, se["spec"]["hosts"])
    cfg = bootstrap(ports.admin, [outbound, frontend], clusters + [mock])
    cfg = apply_envoyfilter(cfg, ef, {outbound["name"]: ("SIDECAR_OUTBOUND", port)})
    added = [p["patch"]["value"]["name"] for p in ef["spec"]["configPatches"] if p["applyTo"] == "CLUSTER"]
    (ext_proc_cluster,) = added
    set_cluster_port(cfg, ext_proc_cluster, ports.ext_proc)   # the native sidecar's loopback port
    return cfg


def _vs_route(http: dict, cluster: str) -> dict:
    """An Istio VirtualService http route as Envoy gets it (the parts the shipped ones use)."""
    (m,) = http["match"]
    route: dict = {"cluster": cluster, "timeout": "0s"}
    if "rewrite" in http:
        route["prefix_rewrite"] = http["rewrite"]["uri"]
    return {"name": http["name"], "match": {"prefix": m.get("uri", {}).get("prefix", "/")}, "route": route}


def istio_egress_gateway(ports: Ports, pki: Pki) -> dict:
    overlay = DEPLOY / "istio" / "egress-gateway"
    (gw,) = docs(overlay / "gateway.yaml")
    (ef,) = docs(overlay / "envoyfilter-ext-proc.yaml")
    vss = docs(overlay / "virtualservice-providers.yaml")
    drs = {d["spec"]["host"]: d for d in docs(overlay / "destinationrule-providers.yaml")}
    (server,) = gw["spec"]["servers"]
    assert server["tls"]["mode"] == "ISTIO_MUTUAL"
    gw_ref = f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"
    port = server["port"]["number"]
    vhosts, clusters = [], {}
    for vs in vss:
        (host,) = vs["spec"]["hosts"]
        routes = []
        for http in vs["spec"]["http"]:
            if not any(gw_ref in m.get("gateways", []) and m.get("port") == port for m in http["match"]):
                continue   # the mesh half of the VirtualService: sidecars, not this gateway
            dest = http["route"][0]["destination"]
            cluster = f"outbound|{dest['port']['number']}||{dest['host']}"
            routes.append(_vs_route(http, cluster))
            (pl,) = [p for p in drs[dest["host"]]["spec"]["trafficPolicy"]["portLevelSettings"]
                     if p["port"]["number"] == dest["port"]["number"]]
            clusters[cluster] = static_cluster(cluster, ports.provider, tls=origination_tls(
                pl["tls"]["sni"], pl["tls"]["subjectAltNames"], pki.ca))
        vhosts.append({"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"], "routes": routes})
    # Istio matches the server's filter chain on SNI = the server's hosts (the sidecar sends the
    # SNI its DestinationRule subset names), so the listener inspects TLS first.
    listener = {"name": f"0.0.0.0_{port}", "address": _addr(ports.listener), "listener_filters": [{
        "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [{
        "filter_chain_match": {"server_names": list(server["hosts"])},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(pki.gateway_cert)},
                                      "private_key": {"filename": str(pki.gateway_key)}}],
                "validation_context": {"trusted_ca": {"filename": str(pki.ca)}}}}},
        "filters": [hcm(f"outbound_0.0.0.0_{port}", {"name": f"https.{port}.{server['port']['name']}",
                                                     "virtual_hosts": vhosts},
                        copy.deepcopy(ISTIO_HTTP_FILTERS), use_remote_address=True,
                        forward_client_cert_details="SANITIZE_SET")]}]}
    frontend, mock = provider_frontend(ports.provider, ports.mock, pki, [vs["spec"]["hosts"][0] for vs in vss])
    grpc_cluster = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER")[
        "patch"]["value"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    # istiod's cluster for the ledgergate Service (appProtocol h2c -> HTTP/2), at the test's port.
    cfg = bootstrap(ports.admin, [listener, frontend],
                    list(clusters.values()) + [mock, static_cluster(grpc_cluster, ports.ext_proc, http2=True)])
    return apply_envoyfilter(cfg, ef, {listener["name"]: ("GATEWAY", port)})


def envoy_gateway(ports: Ports, pki: Pki, eg_translate) -> dict:
    """EG's translation; eg_translate(extProc entry, cluster name) gives the filter."""
    overlay = DEPLOY / "envoy-gateway"
    (gw,) = docs(overlay / "gateway.yaml")
    (eep,) = docs(overlay / "envoyextensionpolicy.yaml")
    backends = {b["metadata"]["name"]: b for b in docs(overlay / "backends.yaml")}
    ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
    (lst,) = gw["spec"]["listeners"]
    (ep,) = eep["spec"]["extProc"]
    filter_name = f"{EXT_PROC}/envoyextensionpolicy/{ns}/{eep['metadata']['name']}/extproc/0"
    ext_cluster = f"envoyextensionpolicy/{ns}/{eep['metadata']['name']}/extproc/0"
    ext_filter = eg_translate(ep, ext_cluster)
    ext_filter["name"] = filter_name
    ext_filter["disabled"] = True             # EG: off in the HCM, on per route of the targeted Gateway
    routes, clusters = [], {}
    for hr in docs(overlay / "httproutes.yaml"):
        assert hr["spec"]["parentRefs"] == [{"name": name}]
        for i, rule in enumerate(hr["spec"]["rules"]):
            (b,) = rule["backendRefs"]
            be = backends[b["name"]]["spec"]
            cluster = f"httproute/{ns}/{hr['metadata']['name']}/rule/{i}"
            clusters[cluster] = static_cluster(cluster, ports.provider, tls={
                "sni": be["tls"]["sni"], "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": str(pki.ca)},   # wellKnownCACertificates: System
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {
                        "exact": be["endpoints"][0]["fqdn"]["hostname"]}}]}}})
            (rewrite,) = [f["urlRewrite"] for f in rule["filters"] if f["type"] == "URLRewrite"]
            # ReplacePrefixMatch of a segment prefix: EG keeps what follows the prefix.
            path_rewrite = {"prefix_rewrite": rewrite["path"]["replacePrefixMatch"]} if "path" in rewrite else {}
            for m in rule["matches"]:
                value = m["path"]["value"]
                match = {"prefix": value} if value.endswith("/") else {"path_separated_prefix": value}
                routes.append({"name": f"{cluster}/match/{len(routes)}", "match": match, "route": {
                    "cluster": cluster, "host_rewrite_literal": rewrite["hostname"],
                    "timeout": rule["timeouts"]["request"], **path_rewrite},
                    # EG: FilterConfig{Config: &anypb.Any{}} (patchRoute, enableFilterOnRoute)
                    "typed_per_filter_config": {filter_name: {
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}})
    # Gateway API precedence: the longest path prefix first.
    routes.sort(key=lambda r: -len(next(iter(r["match"].values()))))
    listener = {"name": f"{ns}/{name}/{lst['name']}", "address": _addr(ports.listener), "filter_chains": [{
        "filters": [hcm(f"{lst['protocol'].lower()}-{lst['port']}", {"name": f"{ns}/{name}/{lst['name']}",
                        "virtual_hosts": [{"name": f"{ns}/{name}/{lst['name']}/*", "domains": ["*"],
                                           "routes": routes}]},
                        [ext_filter, copy.deepcopy(ROUTER)])]}]}
    frontend, mock = provider_frontend(ports.provider, ports.mock, pki,
                                       [b["spec"]["tls"]["sni"] for b in backends.values()])
    return bootstrap(ports.admin, [listener, frontend],
                     list(clusters.values()) + [mock, static_cluster(ext_cluster, ports.ext_proc, http2=True)])


# Envoy Gateway's translation of an extProc entry, written out from envoyproxy/gateway v1.9
# (internal/gatewayapi/envoyextensionpolicy.go buildExtProc, internal/xds/translator/extproc.go
# extProcConfig / buildProcessingMode), independently of ext_proc.cli.mesh.
EG_DEFAULT_GRPC_TIMEOUT = "10s"   # defaultExtServiceRequestTimeout, internal/xds/translator/utils.go


def eg_translate(ext_proc: dict, cluster_name: str) -> dict:
    body = {"Buffered": "BUFFERED", "BufferedPartial": "BUFFERED_PARTIAL", "Streamed": "STREAMED",
            "FullDuplexStreamed": "FULL_DUPLEX_STREAMED"}
    pm = {"request_header_mode": "SKIP", "response_header_mode": "SKIP", "request_body_mode": "NONE",
          "response_body_mode": "NONE", "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"}
    cfg = {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
           "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name}, "timeout": EG_DEFAULT_GRPC_TIMEOUT}}
    mode = ext_proc.get("processingMode") or {}
    for d in ("request", "response"):
        if d in mode:
            pm[f"{d}_header_mode"] = "SEND"
            if "body" in mode[d]:
                pm[f"{d}_body_mode"] = body[mode[d]["body"]]
                if pm[f"{d}_body_mode"] == "FULL_DUPLEX_STREAMED":
                    pm[f"{d}_trailer_mode"] = "SEND"
            if mode[d].get("attributes"):
                cfg[f"{d}_attributes"] = list(mode[d]["attributes"])
    cfg["processing_mode"] = pm
    if "failOpen" in ext_proc:
        cfg["failure_mode_allow"] = ext_proc["failOpen"]
    if "messageTimeout" in ext_proc:
        cfg["message_timeout"] = ext_proc["messageTimeout"]
    cfg["allow_mode_override"] = bool(mode.get("allowModeOverride", False))
    return {"name": EXT_PROC, "typed_config": cfg}


def _pointer(path) -> str:
    """A jsonpath_ng full path as an RFC 6901 JSON pointer."""
    from jsonpath_ng import Child, Fields, Index, Root, This

    if isinstance(path, Child):
        return _pointer(path.left) + _pointer(path.right)
    if isinstance(path, Fields):
        (field,) = path.fields
        return "/" + field.replace("~", "~0").replace("/", "~1")
    if isinstance(path, Index):
        (index,) = path.indices
        return f"/{index}"
    if isinstance(path, (Root, This)):
        return ""
    raise AssertionError(f"unexpected path element {path!r}")


def apply_envoy_patch_policy(cfg: dict, policy: dict) -> dict:
    """Envoy Gateway's JSONPatch on a listener (internal/xds/translator/jsonpatch.go and
    internal/utils/jsonpatch/jsonpathtopointer.go): every jsonPath match, joined with `path`,
    becomes an RFC 6902 operation. Every patch must match (EG reports a failed patch as a status
    condition; here it is an error)."""
    import jsonpatch
    from jsonpath_ng.ext import parse

    cfg = copy.deepcopy(cfg)
    listeners = {lst["name"]: i for i, lst in enumerate(cfg["static_resources"]["listeners"])}
    for p in policy["spec"]["jsonPatches"]:
        assert p["type"] == "type.googleapis.com/envoy.config.listener.v3.Listener", p["type"]
        i = listeners[p["name"]]
        op = p["operation"]
        listener = cfg["static_resources"]["listeners"][i]
        found = parse(op["jsonPath"]).find(listener)
        assert found, f"EnvoyPatchPolicy jsonPath matched nothing: {op['jsonPath']}"
        ops = [{"op": op["op"], "path": _pointer(m.full_path).rstrip("/") + "/" + op["path"].lstrip("/"),
                "value": op["value"]} for m in found]
        cfg["static_resources"]["listeners"][i] = jsonpatch.apply_patch(listener, ops)
    return cfg
