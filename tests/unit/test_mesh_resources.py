"""deploy/istio, deploy/envoy-gateway and deploy/ext-proc-service: every resource validates against
its schema (Istio's, Envoy Gateway's and Gateway API's published CRD schemas, kept in
tests/fixtures/crds; Kubernetes 1.30 for core kinds, strict), `kubectl kustomize` builds every
overlay, and the resources are wired to each other (selectors, ports, hosts, names)."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from ext_proc.cli import mesh
from ext_proc.providers import registry
from tests.support import REPO

DEPLOY = REPO / "deploy"
CRDS = REPO / "tests" / "fixtures" / "crds"
K8S_VERSION = "1.30.0"
OVERLAYS = ["ext-proc-service", "istio/sidecar", "istio/egress-gateway", "envoy-gateway",
            "envoy-gateway-with-patch-policy"]


# --- CRD schemas -> JSON Schema ------------------------------------------------------------------

def _strict(node):
    """A CRD's structural OpenAPI v3 schema as a JSON Schema that refuses unknown fields, the way
    the API server prunes-then-rejects them with kubectl's strict field validation."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


class CelRuleViolation(Exception):
    pass


CEL = celpy.Environment()


@functools.cache
def _cel_program(rule: str):
    return CEL.program(CEL.compile(rule))


def _with_defaults(schema: dict, value):
    """The API server's structural defaulting (a property's `default` when it is absent), which
    happens before the CEL rules see the object."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, s in props.items():
            if k not in value and "default" in s:
                value[k] = copy.deepcopy(s["default"])
        for k, v in value.items():
            s = props.get(k, schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict)
                          else None)
            if s is not None:
                _with_defaults(s, v)
    elif isinstance(value, list) and "items" in schema:
        for v in value:
            _with_defaults(schema["items"], v)
    return value


def check_cel_rules(schema: dict, value, path: str = "") -> int:
    """Evaluate the schema's x-kubernetes-validations rules (CEL, with cel-python) on every node
    present, as the API server does on create. Transition rules (oldSelf) do not apply to a create.
    A rule that cannot be evaluated is an error, not a pass. Returns how many rules were evaluated."""
    evaluated = 0
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            result = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:   # noqa: BLE001 - any failure to evaluate must fail validation
            raise CelRuleViolation(f"{path}: rule {rule['rule']!r} could not be evaluated: {exc}") from exc
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            raise CelRuleViolation(f"{path}: {rule.get('message') or rule['rule']}")
        evaluated += 1
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
    if isinstance(value, dict):
        for k, v in value.items():
            s = props.get(k, extra)
            if s is not None:
                evaluated += check_cel_rules(s, v, f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            evaluated += check_cel_rules(schema["items"], v, f"{path}[{i}]")
    return evaluated


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                for v in crd["spec"]["versions"]:
                    out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = \
                        v["schema"]["openAPIV3Schema"]
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            for v in crd["spec"]["versions"]:
                schema = _strict(v["schema"]["openAPIV3Schema"])
                # Istio's schemas describe only spec/status; the API server adds the envelope.
                for field in ("apiVersion", "kind"):
                    schema["properties"].setdefault(field, {"type": "string"})
                schema["properties"].setdefault("metadata", {"type": "object"})
                key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
                out[key] = jsonschema.Draft7Validator(schema)
    return out


def validate(doc: dict) -> None:
    """Raises on an invalid resource: CRD kinds against the fixtures, core kinds against Kubernetes."""
    key = (doc["apiVersion"], doc["kind"])
    if "/" in doc["apiVersion"] and doc["apiVersion"].split("/")[0].endswith((".istio.io", ".envoyproxy.io",
                                                                               "gateway.networking.k8s.io")):
        validator = crd_validators().get(key)
        assert validator is not None, f"no CRD schema for {key}"
        validator.validate(doc)
        check_cel_rules(crd_schemas()[key], _with_defaults(crd_schemas()[key], copy.deepcopy(doc)))
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
        assert doc["metadata"]["name"] and doc["metadata"].get("namespace")
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- the files -----------------------------------------------------------------------------------

def _kustomization(overlay: str) -> dict:
    return yaml.safe_load((DEPLOY / overlay / "kustomization.yaml").read_text())


def _resource_files() -> list:
    """Every whole resource file of the mesh overlays (patches are partial and checked built)."""
    out = []
    for overlay in OVERLAYS:
        k = _kustomization(overlay)
        out += [DEPLOY / overlay / name for name in k.get("resources", [])]
    return out


def _file_docs() -> list[tuple[str, dict]]:
    return [(f"{p.relative_to(DEPLOY)}:{d['kind']}:{d['metadata']['name']}", d)
            for p in _resource_files() for d in yaml.safe_load_all(p.read_text()) if d]


FILE_DOCS = _file_docs()


@pytest.mark.parametrize("doc", [d for _, d in FILE_DOCS], ids=[i for i, _ in FILE_DOCS])
def test_every_resource_validates_against_its_schema(doc):
    validate(doc)


def test_every_file_in_the_overlays_is_listed_in_its_kustomization():
    for overlay in OVERLAYS:
        k = _kustomization(overlay)
        listed = set(k.get("resources", [])) | set(k.get("patchesStrategicMerge", []))
        present = {p.name for p in (DEPLOY / overlay).glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, overlay


@pytest.mark.parametrize("mutate,kind", [
    (lambda d: d["spec"].__setitem__("configPatch", []), "EnvoyFilter"),                      # typo'd field
    (lambda d: d["spec"]["configPatches"][0]["match"].__setitem__("context", "SIDECAR_OUTBOND"), "EnvoyFilter"),
    (lambda d: d["spec"]["extProc"][0]["processingMode"]["response"].__setitem__("body", "FullDuplex"),
     "EnvoyExtensionPolicy"),
    (lambda d: d["spec"]["extProc"][0].__setitem__("failureModeAllow", False), "EnvoyExtensionPolicy"),
    (lambda d: d["spec"]["ports"][0].__setitem__("number", "80"), "ServiceEntry"),
    (lambda d: d["spec"]["rules"][0]["backendRefs"][0].pop("name"), "HTTPRoute"),
    (lambda d: d["spec"]["template"]["spec"]["initContainers"][0].__setitem__("restartPolicy", 1), "Deployment"),
], ids=["envoyfilter-unknown-field", "envoyfilter-bad-context", "eep-bad-body-mode", "eep-envoy-field-name",
        "serviceentry-port-as-string", "httproute-backend-without-name", "deployment-bad-restart-policy"])
def test_the_validators_reject_broken_resources(mutate, kind):
    doc = copy.deepcopy(next(d for _, d in FILE_DOCS if d["kind"] == kind))
    validate(doc)
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


@pytest.mark.parametrize("mutate,kind", [
    (lambda d: d["spec"].__setitem__("targetRefs", [{"kind": "Gateway", "name": "x"}]), "EnvoyFilter"),
    (lambda d: d["spec"]["extProc"][0]["backendRefs"][0].pop("port"), "EnvoyExtensionPolicy"),
    (lambda d: d["spec"]["endpoints"][0].__setitem__("ip", {"address": "10.0.0.1", "port": 443}), "Backend"),
    (lambda d: d["spec"]["parentRefs"].append({"name": "llm-gateway"}), "HTTPRoute"),
], ids=["envoyfilter-selector-and-targetrefs", "eep-service-without-port", "backend-fqdn-and-ip",
        "httproute-duplicate-parent"])
def test_the_cel_rules_reject_what_the_schema_alone_allows(mutate, kind):
    doc = copy.deepcopy(next(d for _, d in FILE_DOCS if d["kind"] == kind))
    mutate(doc)
    crd_validators()[(doc["apiVersion"], doc["kind"])].validate(doc)   # structurally fine
    with pytest.raises(CelRuleViolation):
        validate(doc)


def test_the_cel_rules_are_evaluated_on_the_shipped_resources():
    counted = 0
    for _, doc in FILE_DOCS:
        key = (doc["apiVersion"], doc["kind"])
        if key in crd_schemas():
            counted += check_cel_rules(crd_schemas()[key], _with_defaults(crd_schemas()[key], copy.deepcopy(doc)))
    assert counted > 300   # 383 when written: the walk reaches the nested rules


# --- kustomize -----------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")


@functools.cache
def built(overlay: str) -> list[dict]:
    res = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return [d for d in yaml.safe_load_all(res.stdout) if d]


needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (.ci/run installs Debian's)")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS + ["k8s"])
def test_kubectl_kustomize_builds_and_every_built_resource_validates(overlay):
    docs = built(overlay)
    assert docs
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "a resource is defined twice"
    for d in docs:
        validate(d)


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)}"
    return found[0]


@needs_kubectl
@pytest.mark.parametrize("overlay", ["ext-proc-service", "istio/egress-gateway", "envoy-gateway",
                                     "envoy-gateway-with-patch-policy"])
def test_the_ext_proc_service_is_ledgergate_alone_on_tcp_50051(overlay):
    docs = built(overlay)
    dep = _one(docs, "Deployment", "ledgergate")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "ledgergate"
    listen = c["args"][c["args"].index("--listen") + 1]
    assert listen == f"0.0.0.0:{mesh.LEDGERGATE_GRPC_PORT}"
    assert c["readinessProbe"]["exec"]["command"][-1] == f"127.0.0.1:{mesh.LEDGERGATE_GRPC_PORT}"
    port = next(p for p in c["ports"] if p["containerPort"] == mesh.LEDGERGATE_GRPC_PORT)
    svc = _one(docs, "Service", "ledgergate")
    (sp,) = svc["spec"]["ports"]
    assert (sp["port"], sp["targetPort"], sp["appProtocol"]) == (mesh.LEDGERGATE_GRPC_PORT, port["name"],
                                                                  "kubernetes.io/h2c")
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ledgergate-envoy"]
    mounted = {m["name"] for m in c["volumeMounts"]}
    assert mounted <= {v["name"] for v in pod["volumes"]}
    assert not {"envoy-config", "envoy-tmp"} & {v["name"] for v in pod["volumes"]}


# --- wiring: Istio sidecar -----------------------------------------------------------------------

def _file(overlay: str, name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / overlay / name).read_text()) if d]


def test_istio_sidecar_wiring():
    (se,) = _file("istio/sidecar", "serviceentry-providers.yaml")
    drs = _file("istio/sidecar", "destinationrule-providers.yaml")
    (ef,) = _file("istio/sidecar", "envoyfilter-ext-proc.yaml")
    (sc,) = _file("istio/sidecar", "sidecar-registry-only.yaml")
    (app,) = _file("istio/sidecar", "app-deployment.yaml")
    hosts = set(mesh.PROVIDER_HOSTS.values())
    # The provider hosts are plain HTTP on one port, TLS originated to 443, and no 443 passthrough.
    assert set(se["spec"]["hosts"]) == hosts
    assert [(p["number"], p["protocol"], p["targetPort"]) for p in se["spec"]["ports"]] == \
        [(mesh.SIDECAR_HTTP_PORT, "HTTP", 443)]
    assert {d["spec"]["host"] for d in drs} == hosts
    for d in drs:
        (pl,) = d["spec"]["trafficPolicy"]["portLevelSettings"]
        assert pl["port"]["number"] == mesh.SIDECAR_HTTP_PORT
        assert pl["tls"]["mode"] == "SIMPLE" and pl["tls"]["sni"] == d["spec"]["host"]
        assert pl["tls"]["subjectAltNames"] == [d["spec"]["host"]]
    insert = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER")
    assert insert["match"]["context"] == "SIDECAR_OUTBOUND"
    assert insert["match"]["listener"]["portNumber"] == mesh.SIDECAR_HTTP_PORT
    # The same pods: the EnvoyFilter, the Sidecar and the app's pod template.
    labels = app["spec"]["template"]["metadata"]["labels"]
    assert ef["spec"]["workloadSelector"]["labels"].items() <= labels.items()
    assert sc["spec"]["workloadSelector"]["labels"] == ef["spec"]["workloadSelector"]["labels"]
    assert sc["spec"]["outboundTrafficPolicy"]["mode"] == "REGISTRY_ONLY"
    # ledgergate is a native sidecar listening where the EnvoyFilter's cluster connects.
    pod = app["spec"]["template"]["spec"]
    (lg,) = [c for c in pod["initContainers"] if c["name"] == "ledgergate"]
    assert lg["restartPolicy"] == "Always"
    cluster = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "CLUSTER")["patch"]["value"]
    assert cluster["name"] == mesh.SIDECAR_EXT_PROC_CLUSTER
    sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    listen = lg["args"][lg["args"].index("--listen") + 1]
    assert listen == f"{sa['address']}:{sa['port_value']}" and sa["address"] == "127.0.0.1"
    assert lg["readinessProbe"]["exec"]["command"][-1] == listen
    assert {m["name"] for m in lg["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}
    config_maps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert config_maps == {d["metadata"]["name"] for n in ("configmap-ledgergate.yaml", "configmap-policy.yaml")
                           for d in _file("istio/sidecar", n)}
    # The SDKs keep the provider host and path, over plain HTTP to the pod's istio-proxy.
    env = {e["name"]: e["value"] for c in pod["containers"] for e in c.get("env", [])}
    assert env["OPENAI_BASE_URL"] == "http://api.openai.com/v1"
    assert env["ANTHROPIC_BASE_URL"] == "http://api.anthropic.com"


@needs_kubectl
def test_istio_sidecar_overlay_puts_everything_in_the_app_namespace():
    docs = built("istio/sidecar")
    assert {d["metadata"]["namespace"] for d in docs} == {_kustomization("istio/sidecar")["namespace"]}
    assert {d["kind"] for d in docs} >= {"EnvoyFilter", "ServiceEntry", "DestinationRule", "Sidecar",
                                          "ConfigMap", "Deployment"}


# --- wiring: Istio egress gateway ----------------------------------------------------------------

@needs_kubectl
def test_istio_egress_gateway_wiring():
    docs = built("istio/egress-gateway")
    gw = _one(docs, "Gateway")
    ef = _one(docs, "EnvoyFilter")
    (server,) = gw["spec"]["servers"]
    assert gw["spec"]["selector"] == ef["spec"]["workloadSelector"]["labels"] == mesh.EGRESS_GATEWAY_LABEL
    assert server["tls"]["mode"] == "ISTIO_MUTUAL" and server["port"]["protocol"] == "HTTPS"
    (insert,) = ef["spec"]["configPatches"]
    assert insert["match"]["context"] == "GATEWAY"
    assert insert["match"]["listener"]["portNumber"] == server["port"]["number"]
    assert set(server["hosts"]) == set(mesh.PROVIDER_HOSTS.values())
    # The filter's gRPC cluster is Istio's outbound cluster of the ledgergate Service.
    svc = _one(docs, "Service", "ledgergate")
    cluster = insert["patch"]["value"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert cluster == (f"outbound|{svc['spec']['ports'][0]['port']}||"
                       f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local")
    # Routes: mesh -> gateway (mTLS subset with the provider's SNI) -> provider (TLS originated).
    gw_host = f"{gw['metadata']['name']}.{gw['metadata']['namespace']}.svc.cluster.local"
    gw_dr = next(d for d in docs if d["kind"] == "DestinationRule" and d["spec"]["host"] == gw_host)
    subsets = {s["name"]: s["trafficPolicy"]["portLevelSettings"][0] for s in gw_dr["spec"]["subsets"]}
    vss = [d for d in docs if d["kind"] == "VirtualService"]
    assert {h for v in vss for h in v["spec"]["hosts"]} == set(mesh.PROVIDER_HOSTS.values())
    origination = {d["spec"]["host"]: d["spec"]["trafficPolicy"]["portLevelSettings"][0] for d in docs
                   if d["kind"] == "DestinationRule" and d["spec"]["host"] in mesh.PROVIDER_HOSTS.values()}
    (se,) = [d for d in docs if d["kind"] == "ServiceEntry"]
    (se_port,) = se["spec"]["ports"]
    for v in vss:
        (host,) = v["spec"]["hosts"]
        to_gw, to_provider = v["spec"]["http"]
        dest = to_gw["route"][0]["destination"]
        assert dest["host"] == gw_host and dest["port"]["number"] == server["port"]["number"]
        assert subsets[dest["subset"]]["tls"] == {"mode": "ISTIO_MUTUAL", "sni": host}
        assert to_gw["match"][0]["port"] == se_port["number"]
        assert to_provider["match"][0]["gateways"] == [f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"]
        pdest = to_provider["route"][0]["destination"]
        assert pdest["host"] == host and pdest["port"]["number"] == se_port["number"]
        assert origination[host]["port"]["number"] == se_port["number"] and se_port["targetPort"] == 443
        assert origination[host]["tls"]["mode"] == "SIMPLE" and origination[host]["tls"]["sni"] == host
    # Only the gateway's identity may reach ext_proc; ledgergate's pod takes mTLS only.
    pa = _one(docs, "PeerAuthentication")
    ap = _one(docs, "AuthorizationPolicy")
    dep = _one(docs, "Deployment", "ledgergate")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["sidecar.istio.io/inject"] == "true"
    assert pa["spec"]["mtls"]["mode"] == "STRICT" and pa["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    grpc_rule = next(r for r in ap["spec"]["rules"] if r["to"][0]["operation"]["ports"] == ["50051"])
    assert grpc_rule["from"][0]["source"]["principals"] == [
        f"cluster.local/ns/{gw['metadata']['namespace']}/sa/{mesh.EGRESS_GATEWAY_LABEL['istio']}"]
    # ledgergate takes the caller's SPIFFE ID from the peer certificate.
    cfg = yaml.safe_load(_one(docs, "ConfigMap", "ledgergate-config")["data"]["ledgergate.yaml"])
    assert cfg["identity"]["mtls"]["enabled"] is True and cfg["identity"]["mtls"]["subject_from"] == "uri_san"
    assert all(k.startswith("spiffe://") for k in cfg["identity"]["mtls"]["roles_by_san"])
    assert cfg["server"]["listen"] == [f"0.0.0.0:{mesh.LEDGERGATE_GRPC_PORT}"]


def test_the_egress_identity_config_is_one_ledgergate_accepts(tmp_path):
    from ext_proc.identity import IdentityConfig

    (cm,) = _file("istio/egress-gateway", "configmap-ledgergate-mesh-identity.yaml")
    cfg = yaml.safe_load(cm["data"]["ledgergate.yaml"])
    ident = IdentityConfig.from_dict(cfg["identity"], tmp_path)
    assert ident.mtls.enabled and ident.mtls.roles_by_san


# --- wiring: Envoy Gateway -----------------------------------------------------------------------

def _sidecar_yaml_prefixes() -> dict[str, list[tuple[str, str | None]]]:
    """cluster -> [(prefix, prefix_rewrite)] of envoy/sidecar.yaml's routes, read independently of mesh."""
    cfg = yaml.safe_load((REPO / "envoy" / "sidecar.yaml").read_text())
    routes = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"]
    out: dict[str, list[tuple[str, str | None]]] = {}
    seen: list[str] = []
    for r in routes:
        p = r["match"]["prefix"]
        if p != "/" and not any(p.startswith(q) for q in seen):   # shadowed by an earlier route
            out.setdefault(r["route"]["cluster"], []).append((p, r["route"].get("prefix_rewrite")))
        if not r["match"].get("headers"):     # a route for one method leaves the others to later routes
            seen.append(p)
    return out


def test_every_provider_of_the_registry_is_in_every_flavour():
    """A provider added to the registry (its module, its local route) reaches every flavour: the
    Envoy configs, the Istio resources of both overlays, the Envoy Gateway Backends and routes."""
    hosts = {u.host for u in registry.upstreams()}
    clusters = {u.cluster for u in registry.upstreams()}
    assert set(mesh.PROVIDER_HOSTS.values()) == hosts and "api.mistral.ai" in hosts
    assert set(_sidecar_yaml_prefixes()) == clusters
    for flavour in ("istio/sidecar", "istio/egress-gateway"):
        (se,) = _file(flavour, "serviceentry-providers.yaml")
        assert set(se["spec"]["hosts"]) == hosts, flavour
        assert {d["spec"]["host"] for d in _file(flavour, "destinationrule-providers.yaml")} == hosts, flavour
    (gw,) = _file("istio/egress-gateway", "gateway.yaml")
    assert set(gw["spec"]["servers"][0]["hosts"]) == hosts
    assert {h for v in _file("istio/egress-gateway", "virtualservice-providers.yaml") for h in v["spec"]["hosts"]} == hosts
    assert {d["metadata"]["name"] for d in _file("envoy-gateway", "backends.yaml")} == clusters
    assert {d["metadata"]["name"] for d in _file("envoy-gateway", "httproutes.yaml")} == clusters


def test_a_route_prefix_is_kept_through_the_filter_and_stripped_after_it():
    """Mistral's chat path is OpenAI's, so ledgergate's routes give it the prefix /mistral: every
    flavour matches the prefixed path (what ledgergate classifies) and rewrites it to the provider's."""
    rewritten = {c: [(p, rw) for p, rw in ps if rw] for c, ps in _sidecar_yaml_prefixes().items()}
    assert rewritten["mistral"] == [("/mistral/v1/", "/v1/")]
    (vs,) = _file("istio/sidecar", "virtualservice-route-prefixes.yaml")
    (http,) = vs["spec"]["http"]
    assert vs["spec"]["hosts"] == ["api.mistral.ai"]
    assert http["match"] == [{"port": mesh.SIDECAR_HTTP_PORT, "uri": {"prefix": "/mistral/v1/"}}]
    assert http["rewrite"] == {"uri": "/v1/"}
    (egress,) = [v for v in _file("istio/egress-gateway", "virtualservice-providers.yaml")
                 if v["spec"]["hosts"] == ["api.mistral.ai"]]
    to_gw, to_provider = egress["spec"]["http"]
    assert "uri" not in to_gw["match"][0] and "rewrite" not in to_gw   # the gateway's filter sees the prefix
    assert to_provider["match"][0]["uri"] == {"prefix": "/mistral/v1/"} and to_provider["rewrite"] == {"uri": "/v1/"}


@needs_kubectl
def test_envoy_gateway_wiring():
    docs = built("envoy-gateway")
    gw = _one(docs, "Gateway", "llm-gateway")
    eep = _one(docs, "EnvoyExtensionPolicy")
    assert eep["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                          "name": gw["metadata"]["name"]}]
    assert eep["metadata"]["namespace"] == gw["metadata"]["namespace"]
    (ep,) = eep["spec"]["extProc"]
    (ref,) = ep["backendRefs"]
    svc = _one(docs, "Service", ref["name"])
    assert ref["port"] in [p["port"] for p in svc["spec"]["ports"]]
    assert ep["failOpen"] is False
    backends = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Backend"}
    prefixes = _sidecar_yaml_prefixes()
    routes = [d for d in docs if d["kind"] == "HTTPRoute"]
    assert {r["metadata"]["name"] for r in routes} == set(prefixes) == set(backends)
    for r in routes:
        name = r["metadata"]["name"]
        host = mesh.PROVIDER_HOSTS[name]
        assert r["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"]}]
        got = []
        for rule in r["spec"]["rules"]:
            (b,) = rule["backendRefs"]
            assert (b["kind"], b["name"]) == ("Backend", name)
            (f,) = rule["filters"]
            assert f["type"] == "URLRewrite" and f["urlRewrite"]["hostname"] == host
            path = f["urlRewrite"].get("path")
            if path is None:
                # Gateway API matches prefixes by whole segments: the trailing slash is dropped
                got += [(m["path"]["value"].rstrip("/") + "/", None) for m in rule["matches"]]
            else:   # Gateway API: ReplacePrefixMatch with exactly one PathPrefix match
                (m,) = rule["matches"]
                assert path["type"] == "ReplacePrefixMatch"
                got.append((m["path"]["value"] + "/", path["replacePrefixMatch"] + "/"))
            be = backends[name]["spec"]
            assert be["endpoints"] == [{"fqdn": {"hostname": host, "port": b["port"]}}]
            assert be["tls"]["sni"] == host and be["tls"]["wellKnownCACertificates"] == "System"
        assert got == [(p.rstrip("/") + "/", rw) for p, rw in prefixes[name]]
    # Only the gateway's proxies reach ext_proc.
    np_ = _one(docs, "NetworkPolicy")
    dep = _one(docs, "Deployment", "ledgergate")
    assert np_["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    grpc = next(i for i in np_["spec"]["ingress"] if i.get("from"))
    assert grpc["ports"] == [{"port": ref["port"], "protocol": "TCP"}]
    assert grpc["from"][0]["podSelector"]["matchLabels"]["gateway.envoyproxy.io/owning-gateway-name"] == \
        gw["metadata"]["name"]


@needs_kubectl
def test_the_patch_policy_overlay_is_the_envoy_gateway_overlay_plus_the_policy():
    base = built("envoy-gateway")
    patched = built("envoy-gateway-with-patch-policy")
    epp = _one(patched, "EnvoyPatchPolicy")
    assert [d for d in patched if d is not epp] == base
    gw = _one(base, "Gateway")
    assert epp["spec"]["targetRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                        "name": gw["metadata"]["name"]}
    assert epp["metadata"]["namespace"] == gw["metadata"]["namespace"]
