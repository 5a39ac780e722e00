"""One source for the ext_proc filter (envoy/filters/ext_proc.yaml), rendered into every place that
configures it: the filter block of envoy/local.yaml, sidecar.yaml and edge.yaml (text, comments
included, nothing else in those files touched), the Istio EnvoyFilters, the Envoy Gateway
EnvoyExtensionPolicy (and the EnvoyPatchPolicy for what it cannot say) under deploy/, and the
ledgergate ConfigMaps the mesh overlays need (copies in the application's namespace for the Istio
sidecar; the egress gateway's with mesh identities).

The providers the same way: their hosts, ports and SNI come from the registry
(ext_proc/providers/registry.py upstreams()), their paths from the one hand-written route table,
envoy/local.yaml's. From those this renders the provider routes and clusters of envoy/sidecar.yaml
and edge.yaml (between marker comments) and every provider resource of the mesh overlays: the
Istio ServiceEntries, DestinationRules, Gateway and VirtualServices, the Envoy Gateway Backends and
HTTPRoutes. A provider whose local route strips a route prefix (Mistral's /mistral/v1/ -> /v1/)
keeps that prefix on every flavour: ledgergate reads the surface from the path.

    python -m ext_proc.cli.mesh            rewrite every copy (then deploy/k8s/sync_configmaps.py
                                           regenerates the k8s Envoy ConfigMap from sidecar.yaml)
    python -m ext_proc.cli.mesh --check    exit 1 and name the copies that drifted

tests/unit/test_mesh_filter_source.py fails when a committed copy differs from what this renders.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ext_proc.providers import registry

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "envoy" / "filters" / "ext_proc.yaml"
ENVOY_CONFIGS = [REPO / "envoy" / n for n in ("local.yaml", "sidecar.yaml", "edge.yaml")]
LOCAL = REPO / "envoy" / "local.yaml"          # the hand-written route table every flavour follows
# The configs that reach the real providers: their provider routes and clusters are rendered.
PROVIDER_CONFIGS = [REPO / "envoy" / n for n in ("sidecar.yaml", "edge.yaml")]
FILTER_NAME = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"

# The provider hosts every flavour routes through ledgergate, by cluster (from the registry).
PROVIDER_HOSTS = {u.cluster: u.host for u in registry.upstreams()}
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"

# Istio sidecar: ledgergate is a native sidecar of the application pod, on the pod's loopback.
SIDECAR_EXT_PROC_CLUSTER = "ledgergate-ext-proc"
SIDECAR_EXT_PROC_PORT = 50051
SIDECAR_WORKLOAD_LABEL = {"ledgergate.dev/egress": "enforce"}
SIDECAR_HTTP_PORT = 80            # the ServiceEntry's plain-HTTP port the SDKs call
APP_NAMESPACE = "llm-apps"        # REPLACE (kustomize `namespace:` in deploy/istio/sidecar)
# Istio egress gateway: a dedicated gateway deployment; ledgergate is a Service in its namespace.
EGRESS_NAMESPACE = "istio-egress"
EGRESS_GATEWAY_LABEL = {"istio": "llm-egressgateway"}
EGRESS_GATEWAY_PORT = 443
LEDGERGATE_NAMESPACE = "ledgergate"
LEDGERGATE_GRPC_PORT = 50051
EGRESS_EXT_PROC_CLUSTER = f"outbound|{LEDGERGATE_GRPC_PORT}||ledgergate.{LEDGERGATE_NAMESPACE}.svc.cluster.local"

# What EG v1.9 names things (internal/gatewayapi/envoyextensionpolicy.go irConfigNameForExtProc,
# internal/xds/translator/utils.go perRouteFilterName); the listener name is the pre-V2 xDS name
# scheme, EG's default until v1.10 (with the XDSNameSchemeV2 runtime flag it is "tcp-80").
EG_GATEWAY = "llm-gateway"
EG_LISTENER = f"{LEDGERGATE_NAMESPACE}/{EG_GATEWAY}/http"
EG_FILTER_NAME = f"{FILTER_NAME}/envoyextensionpolicy/{LEDGERGATE_NAMESPACE}/ledgergate/extproc/0"


# What Envoy Gateway's EnvoyExtensionPolicy cannot say (envoyproxy/gateway v1.9,
# internal/xds/translator/extproc.go): it always uses a 10 s gRPC call timeout, never sets
# max_message_timeout (only used with mode overrides, which ledgergate disallows) nor
# mutation_rules (so a disallowed mutation is ignored instead of failing the request; ledgergate
# never asks for one on this filter: it does not mutate :authority/host/:method/x-envoy-*).
# envoy_patch_policy() carries them for the clusters that enable EnvoyPatchPolicy.
EG_UNEXPRESSIBLE = ("grpc_service.timeout", "max_message_timeout", "mutation_rules")
_EG_BODY_MODES = {"BUFFERED": "Buffered", "STREAMED": "Streamed", "BUFFERED_PARTIAL": "BufferedPartial",
                  "FULL_DUPLEX_STREAMED": "FullDuplexStreamed"}


# --- the source --------------------------------------------------------------------------------

def source_block_text() -> str:
    """The filter as written in the source: from its `name:` line to the end, comments included."""
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name: "))
    return "\n".join(lines[start:]).rstrip("\n") + "\n"


def ext_proc_filter(cluster_name: str = "ledgergate") -> dict:
    """The http_filters entry, with the ext_proc gRPC service pointed at `cluster_name`."""
    f = yaml.safe_load(source_block_text())
    if f.get("name") != FILTER_NAME:
        raise ValueError(f"{SOURCE}: the filter must be named {FILTER_NAME}")
    f["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster_name
    return f


# --- envoy/*.yaml: replace only the filter block, as text ---------------------------------------

_BLOCK_START = re.compile(r"^(?P<indent> *)- name: " + re.escape(FILTER_NAME) + r"\s*$")


def _block_span(lines: list[str]) -> tuple[int, int, int]:
    """(first line, line after the last, indent of the `-`) of the one ext_proc list item."""
    starts = [(i, m) for i, line in enumerate(lines) if (m := _BLOCK_START.match(line))]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one `- name: {FILTER_NAME}` block, found {len(starts)}")
    (start, match), = starts
    indent = len(match["indent"])
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            break
        end += 1
    while end > start + 1 and not lines[end - 1].strip():   # trailing blank lines are not the block's
        end -= 1
    return start, end, indent


def render_block(indent: int) -> list[str]:
    body = source_block_text().splitlines()
    pad = " " * indent
    return [pad + "- " + body[0]] + [(pad + "  " + line) if line.strip() else "" for line in body[1:]]


def replace_filter_block(config_text: str) -> str:
    lines = config_text.splitlines()
    start, end, indent = _block_span(lines)
    out = lines[:start] + render_block(indent) + lines[end:]
    return "\n".join(out) + ("\n" if config_text.endswith("\n") else "")


# --- envoy/*.yaml: Envoy's own replies, as text between two marker comments ----------------------
# The HttpConnectionManager's local_reply_config (each provider's error format, retry-after on
# 503) and the access log for the replies ledgergate never sees, from
# ext_proc/providers/envoy_replies.py. Only the plain envoy/*.yaml carry them: the Istio and
# Envoy Gateway flavours patch an HTTP filter, not the connection manager.

REPLIES_BEGIN = "# BEGIN envoy replies: rendered by `python -m ext_proc.cli.mesh` from ext_proc/providers/envoy_replies.py"
REPLIES_END = "# END envoy replies"
_HCM_KEY = re.compile(r"^(?P<indent> *)route_config:\s*$")


def render_replies_block(indent: int) -> list[str]:
    from ext_proc.providers.envoy_replies import local_reply_access_log, local_reply_config

    pad = " " * indent
    # One line per mapper (JSON is YAML): the block stays readable as a list of cases.
    flow = [pad + "local_reply_config:", pad + "  mappers:"]
    flow += [pad + "  - " + json.dumps(m, separators=(", ", ": ")) for m in local_reply_config()["mappers"]]
    flow += [pad + "access_log:"] + [pad + "- " + json.dumps(a, separators=(", ", ": "))
                                     for a in local_reply_access_log()]
    return [pad + REPLIES_BEGIN] + flow + [pad + REPLIES_END]


def replace_replies_block(config_text: str) -> str:
    """Replace the marked block; without one, insert it before the connection manager's
    route_config (there must be exactly one)."""
    lines = config_text.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == REPLIES_BEGIN]
    if begins:
        start = begins[0]
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == REPLIES_END) + 1
        indent = len(lines[start]) - len(lines[start].lstrip(" "))
    else:
        keys = [(i, m) for i, line in enumerate(lines) if (m := _HCM_KEY.match(line))]
        if len(keys) != 1:
            raise ValueError(f"expected exactly one `route_config:` line, found {len(keys)}")
        (start, match), = keys
        end = start
        indent = len(match["indent"])
    out = lines[:start] + render_replies_block(indent) + lines[end:]
    return "\n".join(out) + ("\n" if config_text.endswith("\n") else "")


# --- envoy/sidecar.yaml, edge.yaml: the provider routes and clusters, between marker comments ----

ROUTES_BEGIN = ("# BEGIN provider routes: rendered by `python -m ext_proc.cli.mesh` from envoy/local.yaml's "
                "routes and ext_proc/providers/registry.py")
ROUTES_END = "# END provider routes"
CLUSTERS_BEGIN = "# BEGIN provider clusters: rendered by `python -m ext_proc.cli.mesh` from ext_proc/providers/registry.py"
CLUSTERS_END = "# END provider clusters"


def _local_routes() -> list[dict]:
    cfg = yaml.safe_load(LOCAL.read_text(encoding="utf-8"))
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    return list(vhost["routes"])


def provider_routes() -> list[dict]:
    """envoy/local.yaml's routes, each with the Host rewritten to its cluster's provider host.
    Raises when a route goes to a cluster no provider owns, or a provider's cluster has no route."""
    hosts = PROVIDER_HOSTS
    out = []
    for r in _local_routes():
        cluster = r["route"]["cluster"]
        if cluster not in hosts:
            raise ValueError(f"{LOCAL.name}: route {r['match']} goes to {cluster!r}, which no provider owns")
        route = {k: v for k, v in r["route"].items() if k != "host_rewrite_literal"}
        route["host_rewrite_literal"] = hosts[cluster]
        out.append({"match": dict(r["match"]), "route": route})
    routed = {r["route"]["cluster"] for r in out if r["match"].get("prefix") != "/"}
    if set(hosts) - routed:
        raise ValueError(f"{LOCAL.name} has no route to the provider cluster(s) {sorted(set(hosts) - routed)}")
    return out


def provider_prefixes() -> dict[str, list[tuple[str, str | None]]]:
    """cluster -> [(path prefix, what Envoy rewrites it to or None)], the catch-all left out and
    so is a prefix an earlier route shadows (Envoy's route table takes the first match; Gateway
    API the longest prefix, so a shadowed one would change where a request goes)."""
    out: dict[str, list[tuple[str, str | None]]] = {u.cluster: [] for u in registry.upstreams()}
    seen: list[str] = []
    for r in _local_routes():
        p = r["match"]["prefix"]
        if p != "/" and not any(p.startswith(q) for q in seen):
            out[r["route"]["cluster"]].append((p, r["route"].get("prefix_rewrite")))
        if route_method(r) is None:     # a route for one method leaves the others to later routes
            seen.append(p)
    return out


def route_method(route: dict) -> str | None:
    """The one HTTP method a local route is restricted to (an exact `:method` header match)."""
    for h in route["match"].get("headers") or ():
        if h.get("name") == ":method":
            return str(h["string_match"]["exact"])
    return None


def _prefix_methods() -> dict[str, str]:
    return {r["match"]["prefix"]: m for r in _local_routes() if (m := route_method(r)) is not None}


def provider_cluster(u: registry.Upstream) -> dict:
    """TLS to the provider's host and port, SNI as the registry says, the certificate checked
    against the system CAs and for the provider's name."""
    return {
        "name": u.cluster, "type": "LOGICAL_DNS", "connect_timeout": "2s", "dns_lookup_family": "V4_ONLY",
        "load_assignment": {"cluster_name": u.cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": u.host, "port_value": u.port}}}}]}]},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": u.sni,
            "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": SYSTEM_CAS},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": u.host}}]}}}},
    }


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    return [pad + line for line in yaml.safe_dump(value, sort_keys=False, width=120).splitlines()]


def replace_marked(config_text: str, begin: str, end: str, body: Callable[[int], list[str]]) -> str:
    """Replace the lines between the one `begin` comment and the next `end` comment (both kept,
    at their indentation) with body(indent)."""
    lines = config_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(begin.split(":", 1)[0] + ":")]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one `{begin.split(':', 1)[0]}` comment, found {len(starts)}")
    start = starts[0]
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == end), None)
    if stop is None:
        raise ValueError(f"`{end}` is missing")
    indent = len(lines[start]) - len(lines[start].lstrip(" "))
    out = lines[:start] + [" " * indent + begin] + body(indent) + [" " * indent + end] + lines[stop + 1:]
    return "\n".join(out) + ("\n" if config_text.endswith("\n") else "")


def replace_provider_blocks(config_text: str) -> str:
    text = replace_marked(config_text, ROUTES_BEGIN, ROUTES_END, lambda i: _yaml_lines(provider_routes(), i))
    return replace_marked(text, CLUSTERS_BEGIN, CLUSTERS_END,
                          lambda i: _yaml_lines([provider_cluster(u) for u in registry.upstreams()], i))


# --- Istio -------------------------------------------------------------------------------------

def _grpc_cluster(name: str, address: dict) -> dict:
    """A static HTTP/2 cluster for the ext_proc server, sized like envoy/sidecar.yaml's."""
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100000}}}},
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 100000,
                                             "max_pending_requests": 100000, "max_requests": 100000}]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address}}]}]},
    }


def _insert_before_router(context: str, port: int, value: dict) -> dict:
    return {"applyTo": "HTTP_FILTER",
            "match": {"context": context, "listener": {"portNumber": port, "filterChain": {
                "filter": {"name": HCM, "subFilter": {"name": ROUTER}}}}},
            "patch": {"operation": "INSERT_BEFORE", "value": value}}


# Switches a filter that is disabled in the HCM on for one virtual host or route: a FilterConfig
# with an empty config (Envoy refuses one with no config at all; Envoy Gateway enables its
# per-route filters the same way).
ENABLE_FILTER = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}


def _enable_on_vhost(host: str, port: int) -> dict:
    # Istio names an outbound virtual host "<host>:<port>" in the route configuration "<port>".
    return {"applyTo": "VIRTUAL_HOST",
            "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {
                "portNumber": port, "vhost": {"name": f"{host}:{port}"}}},
            "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {FILTER_NAME: dict(ENABLE_FILTER)}}}}


def istio_sidecar_envoyfilter() -> dict:
    """Outbound chain of the labelled application pods: the filter before the router on the
    plain-HTTP port of the provider ServiceEntry, disabled there by default (that listener carries
    every port-80 service of the mesh) and switched on for the provider virtual hosts only; the
    ext_proc cluster is the native-sidecar ledgergate on the pod's loopback."""
    f = ext_proc_filter(SIDECAR_EXT_PROC_CLUSTER)
    f["disabled"] = True
    patches = [
        {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND"},
         "patch": {"operation": "ADD", "value": _grpc_cluster(SIDECAR_EXT_PROC_CLUSTER, {
             "socket_address": {"address": "127.0.0.1", "port_value": SIDECAR_EXT_PROC_PORT}})}},
        _insert_before_router("SIDECAR_OUTBOUND", SIDECAR_HTTP_PORT, f),
    ] + [_enable_on_vhost(h, SIDECAR_HTTP_PORT) for h in PROVIDER_HOSTS.values()]
    return _envoyfilter("ledgergate-ext-proc", APP_NAMESPACE,
                        {"workloadSelector": {"labels": dict(SIDECAR_WORKLOAD_LABEL)}, "configPatches": patches})


def istio_egress_envoyfilter() -> dict:
    """The dedicated LLM egress gateway: every request on its provider server port goes through
    ledgergate (the Service's outbound cluster, HTTP/2 because the Service port is gRPC)."""
    f = ext_proc_filter(EGRESS_EXT_PROC_CLUSTER)
    return _envoyfilter("ledgergate-ext-proc", EGRESS_NAMESPACE, {
        "workloadSelector": {"labels": dict(EGRESS_GATEWAY_LABEL)},
        "configPatches": [_insert_before_router("GATEWAY", EGRESS_GATEWAY_PORT, f)]})


def _envoyfilter(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "ledgergate"}},
            "spec": spec}


# --- Envoy Gateway -----------------------------------------------------------------------------

def envoy_gateway_ext_proc(backend_refs: list[dict]) -> dict:
    """One `extProc` entry of an EnvoyExtensionPolicy, saying what the source says in the terms
    Envoy Gateway has; raises when the source needs something EG cannot express (except the
    fields named in EG_UNEXPRESSIBLE, which docs/deploy-mesh.md discusses)."""
    cfg = ext_proc_filter()["typed_config"]
    pm = cfg["processing_mode"]
    # EG sends headers in a direction whenever that direction is configured, and sets the
    # trailer mode itself: SEND only with FULL_DUPLEX_STREAMED.
    for direction in ("request", "response"):
        if pm[f"{direction}_header_mode"] != "SEND":
            raise ValueError(f"Envoy Gateway always sends {direction} headers")
        want_trailers = "SEND" if pm[f"{direction}_body_mode"] == "FULL_DUPLEX_STREAMED" else "SKIP"
        if pm[f"{direction}_trailer_mode"] != want_trailers:
            raise ValueError(f"Envoy Gateway would set {direction}_trailer_mode {want_trailers}")
    unknown = set(cfg) - {"@type", "grpc_service", "failure_mode_allow", "processing_mode", "message_timeout",
                          "allow_mode_override", "request_attributes", "response_attributes",
                          "max_message_timeout", "mutation_rules"}
    if unknown:
        raise ValueError(f"no EnvoyExtensionPolicy field for {sorted(unknown)}")
    request: dict[str, Any] = {"body": _EG_BODY_MODES[pm["request_body_mode"]]}
    response: dict[str, Any] = {"body": _EG_BODY_MODES[pm["response_body_mode"]]}
    if cfg.get("request_attributes"):
        request["attributes"] = list(cfg["request_attributes"])
    if cfg.get("response_attributes"):
        response["attributes"] = list(cfg["response_attributes"])
    return {
        "backendRefs": backend_refs,
        "failOpen": bool(cfg["failure_mode_allow"]),
        "messageTimeout": cfg["message_timeout"],
        "processingMode": {"allowModeOverride": bool(cfg["allow_mode_override"]),
                           "request": request, "response": response},
    }


def envoy_extension_policy() -> dict:
    return {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
            "metadata": {"name": "ledgergate", "namespace": LEDGERGATE_NAMESPACE,
                         "labels": {"app.kubernetes.io/part-of": "ledgergate"}},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": EG_GATEWAY}],
                     "extProc": [envoy_gateway_ext_proc([{"name": "ledgergate", "port": LEDGERGATE_GRPC_PORT}])]}}


def _protojson(value):
    """Envoy's YAML takes a wrapper type as {value: x}; Go's protojson (which Envoy Gateway
    patches with) only as the bare x."""
    if isinstance(value, dict):
        if set(value) == {"value"} and not isinstance(value["value"], (dict, list)):
            return value["value"]
        return {k: _protojson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_protojson(v) for v in value]
    return value


def envoy_patch_policy() -> dict:
    """The part of the source an EnvoyExtensionPolicy cannot say (EG_UNEXPRESSIBLE), patched into
    the filter EG generates. Needs extensionApis.enableEnvoyPatchPolicy in the EG configuration."""
    cfg = ext_proc_filter()["typed_config"]
    where = f"$..http_filters[?(@.name == '{EG_FILTER_NAME}')].typed_config"
    ops = [("replace", "grpc_service/timeout", cfg["grpc_service"]["timeout"]),
           ("add", "max_message_timeout", cfg["max_message_timeout"]),
           ("add", "mutation_rules", _protojson(cfg["mutation_rules"]))]
    return {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyPatchPolicy",
            "metadata": {"name": "ledgergate-ext-proc", "namespace": LEDGERGATE_NAMESPACE,
                         "labels": {"app.kubernetes.io/part-of": "ledgergate"}},
            "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": EG_GATEWAY},
                     "type": "JSONPatch",
                     "jsonPatches": [{"type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                                      "name": EG_LISTENER,
                                      "operation": {"op": op, "jsonPath": where, "path": path, "value": value}}
                                     for op, path, value in ops]}}


# --- the provider resources of the mesh overlays (hosts, ports, SNI from the registry) ----------

EGRESS_GATEWAY_HOST = f"{EGRESS_GATEWAY_LABEL['istio']}.{EGRESS_NAMESPACE}.svc.cluster.local"


def _meta(name: str, namespace: str) -> dict:
    return {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "ledgergate"}}


def _provider_target_port() -> int:
    """A ServiceEntry port has one targetPort: every provider host must listen on the same one."""
    ports = {u.port for u in registry.upstreams()}
    if len(ports) != 1:
        raise ValueError(f"the provider ServiceEntry takes one TLS port, the registry names {sorted(ports)}")
    return ports.pop()


def istio_provider_serviceentry(namespace: str, *, export_here: bool) -> dict:
    spec: dict[str, Any] = {"hosts": list(PROVIDER_HOSTS.values()), "location": "MESH_EXTERNAL", "resolution": "DNS"}
    if export_here:
        spec["exportTo"] = ["."]
    spec["ports"] = [{"number": SIDECAR_HTTP_PORT, "name": "http", "protocol": "HTTP",
                      "targetPort": _provider_target_port()}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": _meta("llm-providers", namespace),
            "spec": spec}


def istio_tls_origination(namespace: str) -> list[dict]:
    return [{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
             "metadata": _meta(f"tls-origination-{u.cluster}", namespace),
             "spec": {"host": u.host, "exportTo": ["."], "trafficPolicy": {"portLevelSettings": [{
                 "port": {"number": SIDECAR_HTTP_PORT},
                 "tls": {"mode": "SIMPLE", "sni": u.sni, "subjectAltNames": [u.host]}}]}}}
            for u in registry.upstreams()]


def _rewritten_prefixes(cluster: str) -> list[tuple[str, str]]:
    return [(p, rw) for p, rw in provider_prefixes()[cluster] if rw is not None]


def _to_provider(host: str, name: str, match: dict, prefixes: list[tuple[str, str]]) -> list[dict]:
    """The route(s) to the provider's port-80 mesh service; a route prefix (ledgergate's, not the
    provider's) is matched and rewritten away, and a path without it is not routed at all."""
    dest = [{"destination": {"host": host, "port": {"number": SIDECAR_HTTP_PORT}}}]
    if not prefixes:
        return [{"name": name, "match": [match], "route": dest}]
    return [{"name": f"{name}-{i}" if len(prefixes) > 1 else name, "match": [{**match, "uri": {"prefix": p}}],
             "rewrite": {"uri": rw}, "route": dest} for i, (p, rw) in enumerate(prefixes)]


def istio_sidecar_route_prefixes() -> list[dict]:
    """Sidecar mode: a provider with a route prefix is called as http://<host><prefix>... (the
    SDK's base URL carries the prefix, so ledgergate reads the provider from the path); the
    outbound route strips the prefix after the filter."""
    return [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": _meta(f"route-prefix-{u.cluster}", APP_NAMESPACE),
             "spec": {"hosts": [u.host], "exportTo": ["."],
                      "http": _to_provider(u.host, "strip-route-prefix", {"port": SIDECAR_HTTP_PORT},
                                           _rewritten_prefixes(u.cluster))}}
            for u in registry.upstreams() if _rewritten_prefixes(u.cluster)]


def istio_egress_gateway() -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": _meta(EGRESS_GATEWAY_LABEL["istio"], EGRESS_NAMESPACE),
            "spec": {"selector": dict(EGRESS_GATEWAY_LABEL), "servers": [{
                "port": {"number": EGRESS_GATEWAY_PORT, "name": "https-llm", "protocol": "HTTPS"},
                "hosts": list(PROVIDER_HOSTS.values()), "tls": {"mode": "ISTIO_MUTUAL"}}]}}


def istio_egress_gateway_subsets() -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": _meta(EGRESS_GATEWAY_LABEL["istio"], EGRESS_NAMESPACE),
            "spec": {"host": EGRESS_GATEWAY_HOST, "subsets": [
                {"name": u.cluster, "trafficPolicy": {"portLevelSettings": [{
                    "port": {"number": EGRESS_GATEWAY_PORT}, "tls": {"mode": "ISTIO_MUTUAL", "sni": u.host}}]}}
                for u in registry.upstreams()]}}


def istio_egress_virtualservices() -> list[dict]:
    gateway = f"{EGRESS_NAMESPACE}/{EGRESS_GATEWAY_LABEL['istio']}"
    return [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": _meta(f"llm-{u.cluster}", EGRESS_NAMESPACE),
             "spec": {"hosts": [u.host], "gateways": ["mesh", gateway], "http": [
                 {"name": "mesh-to-egressgateway", "match": [{"gateways": ["mesh"], "port": SIDECAR_HTTP_PORT}],
                  "route": [{"destination": {"host": EGRESS_GATEWAY_HOST, "subset": u.cluster,
                                             "port": {"number": EGRESS_GATEWAY_PORT}}}]},
                 *_to_provider(u.host, "egressgateway-to-provider", {"gateways": [gateway], "port": EGRESS_GATEWAY_PORT},
                               _rewritten_prefixes(u.cluster))]}}
            for u in registry.upstreams()]


def envoy_gateway_backends() -> list[dict]:
    return [{"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "Backend",
             "metadata": _meta(u.cluster, LEDGERGATE_NAMESPACE),
             "spec": {"endpoints": [{"fqdn": {"hostname": u.host, "port": u.port}}],
                      "tls": {"sni": u.sni, "wellKnownCACertificates": "System"}}}
            for u in registry.upstreams()]


def _gateway_api_prefix(prefix: str) -> str:
    # Gateway API matches a path prefix by whole segments; a trailing slash adds nothing there.
    return prefix.rstrip("/") if prefix != "/" else prefix


def envoy_gateway_httproutes() -> list[dict]:
    """One HTTPRoute per provider: its unshadowed local prefixes to its Backend, Host rewritten; a
    prefix Envoy rewrites (a route prefix) is a rule of its own (ReplacePrefixMatch takes one match)."""
    out = []
    for u in registry.upstreams():
        backend = [{"group": "gateway.envoyproxy.io", "kind": "Backend", "name": u.cluster, "port": u.port}]
        plain = [p for p, rw in provider_prefixes()[u.cluster] if rw is None]
        methods = _prefix_methods()
        rules: list[dict[str, Any]] = []
        if plain:
            # A method-restricted prefix keeps its method: Gateway API prefers a method match over
            # none at equal prefix length, as Envoy's first-match table did.
            rules.append({"matches": [{"path": {"type": "PathPrefix", "value": _gateway_api_prefix(p)},
                                       **({"method": methods[p]} if p in methods else {})} for p in plain],
                          "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": u.host}}]})
        for p, rw in _rewritten_prefixes(u.cluster):
            rules.append({"matches": [{"path": {"type": "PathPrefix", "value": _gateway_api_prefix(p)}}],
                          "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": u.host, "path": {
                              "type": "ReplacePrefixMatch", "replacePrefixMatch": _gateway_api_prefix(rw)}}}]})
        for rule in rules:
            rule.update({"backendRefs": backend, "timeouts": {"request": "0s"}})
        out.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": _meta(u.cluster, LEDGERGATE_NAMESPACE),
                    "spec": {"parentRefs": [{"name": EG_GATEWAY}], "rules": rules}})
    return out


# What each provider file says to its reader (kept here, as the files are generated).
PROVIDER_FILE_NOTES = {
    "istio/sidecar/serviceentry-providers.yaml": """\
# The provider hosts as mesh services on plain HTTP port 80: the SDKs call http://<provider host>
# (OPENAI_BASE_URL=http://api.openai.com/v1, ANTHROPIC_BASE_URL=http://api.anthropic.com), the
# request stays inside the pod in plain text, istio-proxy runs ledgergate on it and originates TLS
# to port 443 (destinationrule-providers.yaml). There is deliberately NO port 443 entry: together
# with sidecar-registry-only.yaml an https:// call straight to a provider has no route and fails,
# so the only way out to a provider is through the filter.
""",
    "istio/sidecar/destinationrule-providers.yaml": """\
# TLS origination: the sidecar connects to the provider's port 443 (the ServiceEntry's targetPort)
# with TLS, SNI and a certificate checked against the system CAs for the provider's name.
""",
    "istio/sidecar/virtualservice-route-prefixes.yaml": """\
# The providers ledgergate's routes give a prefix of their own (their paths are another provider's,
# e.g. Mistral's chat is OpenAI's /v1/chat/completions): the SDK's base URL carries the prefix
# (http://api.mistral.ai/mistral/v1), ledgergate reads the provider from the path, and the route
# strips the prefix after the filter. A path without the prefix is not routed to the provider.
""",
    "istio/egress-gateway/serviceentry-providers.yaml": """\
# The provider hosts as mesh services on plain HTTP port 80 (targetPort 443): apps call
# http://api.openai.com/v1 (OPENAI_BASE_URL), their sidecar sends it over mTLS to the egress
# gateway (virtualservice-providers.yaml), the gateway runs ledgergate and originates TLS to the
# provider's 443 (destinationrule-providers.yaml). No port 443 entry: with
# meshConfig.outboundTrafficPolicy REGISTRY_ONLY an https:// call straight to a provider has no route.
""",
    "istio/egress-gateway/destinationrule-providers.yaml": """\
# TLS origination at the gateway (exportTo "." keeps it to the gateway's namespace): TLS to the
# provider's port 443 with SNI and the certificate checked against the system CAs for its name.
""",
    "istio/egress-gateway/gateway.yaml": """\
# The gateway's provider server: HTTPS with Istio mutual TLS, so the gateway Envoy sees the calling
# workload's certificate (its SPIFFE ID in the URI SAN) and passes it to ledgergate as
# connection.uri_san_peer_certificate. Dedicated to LLM providers: the EnvoyFilter puts ledgergate
# in front of everything on this port, and ledgergate refuses what is not a provider API.
""",
    "istio/egress-gateway/destinationrule-egressgateway.yaml": """\
# The sidecar -> gateway hop: Istio mutual TLS (the gateway learns the caller's SPIFFE ID), one
# subset per provider so the SNI names the provider the gateway server expects.
""",
    "istio/egress-gateway/virtualservice-providers.yaml": """\
# Sidecars send a provider host's port-80 requests to the egress gateway (mesh); the gateway sends
# them on to the provider (its port-80 mesh service, whose TLS origination is in
# destinationrule-providers.yaml). Both hops are HTTP to Envoy, so the gateway's filter sees them.
# A provider with a route prefix (http://api.mistral.ai/mistral/v1) has it stripped after the
# gateway's filter; a path without it is not routed to the provider.
""",
    "envoy-gateway/backends.yaml": """\
# One Backend per provider: its public host on 443, TLS with SNI, the certificate checked against
# the system CAs. (A Backend, not an ExternalName Service: Envoy Gateway originates TLS to it.)
""",
    "envoy-gateway/httproutes.yaml": """\
# The provider API paths of envoy/local.yaml's route table, per provider, to that provider's Backend
# with the Host rewritten to the provider's (and a route prefix such as /mistral replaced by the
# provider's own path); request timeout off (streams last as long as the model writes).
# A prefix that the route table shadows with an earlier route (gemini's /v1/models/ under OpenAI's
# /v1/models) is left out: Gateway API picks the longest prefix, Envoy's route table the first.
# Paths no route names get 404 from Envoy and reach no provider.
""",
}


def provider_resources() -> dict[str, list[dict]]:
    """deploy/-relative path -> the resources it holds."""
    return {
        "istio/sidecar/serviceentry-providers.yaml": [istio_provider_serviceentry(APP_NAMESPACE, export_here=True)],
        "istio/sidecar/destinationrule-providers.yaml": istio_tls_origination(APP_NAMESPACE),
        "istio/sidecar/virtualservice-route-prefixes.yaml": istio_sidecar_route_prefixes(),
        "istio/egress-gateway/serviceentry-providers.yaml": [istio_provider_serviceentry(EGRESS_NAMESPACE,
                                                                                         export_here=False)],
        "istio/egress-gateway/destinationrule-providers.yaml": istio_tls_origination(EGRESS_NAMESPACE),
        "istio/egress-gateway/gateway.yaml": [istio_egress_gateway()],
        "istio/egress-gateway/destinationrule-egressgateway.yaml": [istio_egress_gateway_subsets()],
        "istio/egress-gateway/virtualservice-providers.yaml": istio_egress_virtualservices(),
        "envoy-gateway/backends.yaml": envoy_gateway_backends(),
        "envoy-gateway/httproutes.yaml": envoy_gateway_httproutes(),
    }


# --- ConfigMap copies for the application namespace (Istio sidecar mode) ----------------------

def _configmap_in(path: Path, namespace: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    return doc


# The mesh identities of the egress-gateway example: SPIFFE ID -> roles / tenant (REPLACE).
EGRESS_MTLS_EXAMPLE = {
    "enabled": True, "subject_from": "uri_san", "issuer": "istio",
    "roles_by_san": {f"spiffe://cluster.local/ns/{APP_NAMESPACE}/sa/chat-app": ["developer"]},
    "tenant_by_san": {f"spiffe://cluster.local/ns/{APP_NAMESPACE}/sa/chat-app": "acme"},
}


def egress_ledgergate_configmap() -> dict:
    """deploy/k8s's ledgergate config with the ext_proc listener on TCP (what the container's
    --listen says) and identities taken from the callers' mesh certificates as well as tokens."""
    doc = _configmap_in(REPO / "deploy" / "k8s" / "configmap-ledgergate.yaml", LEDGERGATE_NAMESPACE)
    cfg = yaml.safe_load(doc["data"]["ledgergate.yaml"])
    cfg["server"]["listen"] = [f"0.0.0.0:{LEDGERGATE_GRPC_PORT}"]
    cfg["identity"]["mtls"] = copy.deepcopy(EGRESS_MTLS_EXAMPLE)
    doc["data"]["ledgergate.yaml"] = yaml.safe_dump(cfg, sort_keys=False, width=120)
    return doc


# --- writing -------------------------------------------------------------------------------------

def _dump(header: str, docs: list[dict]) -> str:
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=120) for d in docs)


def _generated(what: str) -> str:
    return (f"# GENERATED by `python -m ext_proc.cli.mesh` from {what}: do not edit by hand.\n"
            "# tests/unit/test_mesh_filter_source.py fails when this copy drifts from its source.\n")


def rendered_files() -> dict[Path, str]:
    """Every file this module owns the content (or, for envoy/*.yaml, the filter block) of."""
    src = "envoy/filters/ext_proc.yaml"
    out = {p: replace_replies_block(replace_filter_block(p.read_text(encoding="utf-8"))) for p in ENVOY_CONFIGS}
    for p in PROVIDER_CONFIGS:
        out[p] = replace_provider_blocks(out[p])
    deploy = REPO / "deploy"
    providers = "ext_proc/providers/registry.py and envoy/local.yaml's routes"
    for rel, docs in provider_resources().items():
        out[deploy / rel] = _dump(_generated(providers) + PROVIDER_FILE_NOTES[rel], docs)
    out[deploy / "istio" / "sidecar" / "envoyfilter-ext-proc.yaml"] = _dump(_generated(src), [istio_sidecar_envoyfilter()])
    out[deploy / "istio" / "egress-gateway" / "envoyfilter-ext-proc.yaml"] = _dump(
        _generated(src), [istio_egress_envoyfilter()])
    out[deploy / "envoy-gateway" / "envoyextensionpolicy.yaml"] = _dump(_generated(src), [envoy_extension_policy()])
    out[deploy / "istio" / "egress-gateway" / "configmap-ledgergate-mesh-identity.yaml"] = _dump(
        _generated("deploy/k8s/configmap-ledgergate.yaml (TCP listener, identity.mtls from the mesh)"),
        [egress_ledgergate_configmap()])
    out[deploy / "envoy-gateway-with-patch-policy" / "envoypatchpolicy.yaml"] = _dump(
        _generated(src + " (the fields EnvoyExtensionPolicy cannot express)"), [envoy_patch_policy()])
    for name in ("configmap-ledgergate.yaml", "configmap-policy.yaml"):
        out[deploy / "istio" / "sidecar" / name] = _dump(
            _generated(f"deploy/k8s/{name} (namespace changed)"),
            [_configmap_in(deploy / "k8s" / name, APP_NAMESPACE)])
    return out


def drifted() -> list[Path]:
    return [p for p, text in rendered_files().items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ext_proc.cli.mesh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report copies that differ")
    args = ap.parse_args(argv)
    if args.check:
        stale = drifted()
        for p in stale:
            print(f"drifted: {p.relative_to(REPO)}")
        return 1 if stale else 0
    for path, text in rendered_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    print("now regenerate the k8s Envoy ConfigMap: python deploy/k8s/sync_configmaps.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
