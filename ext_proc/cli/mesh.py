"""One source for the ext_proc filter (envoy/filters/ext_proc.yaml), rendered into every place that
configures it: the filter block of envoy/local.yaml, sidecar.yaml and edge.yaml (text, comments
included, nothing else in those files touched), the Istio EnvoyFilters, the Envoy Gateway
EnvoyExtensionPolicy (and the EnvoyPatchPolicy for what it cannot say) under deploy/, and the
ledgergate ConfigMaps the mesh overlays need (copies in the application's namespace for the Istio
sidecar; the egress gateway's with mesh identities).

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
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "envoy" / "filters" / "ext_proc.yaml"
ENVOY_CONFIGS = [REPO / "envoy" / n for n in ("local.yaml", "sidecar.yaml", "edge.yaml")]
FILTER_NAME = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"

# The provider hosts every mesh flavour routes through ledgergate (the upstreams of envoy/sidecar.yaml).
PROVIDER_HOSTS = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "gemini": "generativelanguage.googleapis.com",
    "bedrock": "bedrock-runtime.us-east-1.amazonaws.com",
}

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
    starts = [i for i, line in enumerate(lines) if _BLOCK_START.match(line)]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one `- name: {FILTER_NAME}` block, found {len(starts)}")
    start = starts[0]
    indent = len(_BLOCK_START.match(lines[start])["indent"])
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
        keys = [i for i, line in enumerate(lines) if _HCM_KEY.match(line)]
        if len(keys) != 1:
            raise ValueError(f"expected exactly one `route_config:` line, found {len(keys)}")
        start = end = keys[0]
        indent = len(_HCM_KEY.match(lines[start])["indent"])
    out = lines[:start] + render_replies_block(indent) + lines[end:]
    return "\n".join(out) + ("\n" if config_text.endswith("\n") else "")


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
    request = {"body": _EG_BODY_MODES[pm["request_body_mode"]]}
    response = {"body": _EG_BODY_MODES[pm["response_body_mode"]]}
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
    deploy = REPO / "deploy"
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
