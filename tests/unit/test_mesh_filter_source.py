"""One source for the ext_proc filter: every copy (envoy/*.yaml's filter block, the k8s Envoy
ConfigMap, the Istio EnvoyFilters, the Envoy Gateway EnvoyExtensionPolicy) says what
envoy/filters/ext_proc.yaml says, and the checks notice when one does not."""

from __future__ import annotations

import copy

import pytest
import yaml

from ext_proc.cli import mesh
from ext_proc.providers import registry
from tests.mesh_shapes import eg_translate
from tests.support import REPO

SOURCE_FILTER = yaml.safe_load(mesh.source_block_text())


def _ext_proc_filters(node) -> list[dict]:
    """Every http_filters entry named envoy.filters.http.ext_proc anywhere in a parsed config."""
    found = []
    if isinstance(node, dict):
        if node.get("name") == mesh.FILTER_NAME and "typed_config" in node:
            found.append(node)
        for v in node.values():
            found += _ext_proc_filters(v)
    elif isinstance(node, list):
        for v in node:
            found += _ext_proc_filters(v)
    return found


def _without_cluster(f: dict) -> dict:
    f = copy.deepcopy(f)
    f["typed_config"]["grpc_service"]["envoy_grpc"].pop("cluster_name")
    return f


def _docs(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_source_is_the_filter_ledgergate_needs():
    cfg = SOURCE_FILTER["typed_config"]
    assert SOURCE_FILTER["name"] == mesh.FILTER_NAME
    assert cfg["failure_mode_allow"] is False
    pm = cfg["processing_mode"]
    assert (pm["request_body_mode"], pm["response_body_mode"], pm["response_trailer_mode"]) == \
        ("BUFFERED", "FULL_DUPLEX_STREAMED", "SEND")
    assert "connection.uri_san_peer_certificate" in cfg["request_attributes"]
    assert cfg["mutation_rules"]["disallow_is_error"] == {"value": True}


@pytest.mark.parametrize("path", mesh.ENVOY_CONFIGS, ids=[p.name for p in mesh.ENVOY_CONFIGS])
def test_every_envoy_config_carries_the_source_filter(path):
    filters = _ext_proc_filters(yaml.safe_load(path.read_text()))
    assert filters and all(f == mesh.ext_proc_filter("ledgergate") for f in filters), \
        f"{path.name} drifted from envoy/filters/ext_proc.yaml (python -m ext_proc.cli.mesh)"
    # Text too (the comments that explain the settings travel with them).
    assert mesh.replace_filter_block(path.read_text()) == path.read_text()


def test_the_k8s_envoy_configmap_carries_the_source_filter():
    (cm,) = _docs(REPO / "deploy" / "k8s" / "configmap-envoy.yaml")
    (f,) = _ext_proc_filters(yaml.safe_load(cm["data"]["envoy.yaml"]))
    assert f == mesh.ext_proc_filter("ledgergate")


def test_the_istio_envoyfilters_carry_the_source_filter_before_the_router():
    for overlay, cluster in (("sidecar", mesh.SIDECAR_EXT_PROC_CLUSTER), ("egress-gateway", mesh.EGRESS_EXT_PROC_CLUSTER)):
        (ef,) = _docs(REPO / "deploy" / "istio" / overlay / "envoyfilter-ext-proc.yaml")
        inserts = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
        assert len(inserts) == 1, overlay
        patch = inserts[0]
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
        assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == mesh.ROUTER
        value = copy.deepcopy(patch["patch"]["value"])
        disabled = value.pop("disabled", False)
        assert value["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == cluster
        assert _without_cluster(value) == _without_cluster(SOURCE_FILTER), overlay
        # Sidecar: off by default on the shared port-80 listener, on for each provider host.
        if overlay == "sidecar":
            assert disabled is True
            enabled = {p["match"]["routeConfiguration"]["vhost"]["name"] for p in ef["spec"]["configPatches"]
                       if p["applyTo"] == "VIRTUAL_HOST"
                       and p["patch"]["value"]["typed_per_filter_config"][mesh.FILTER_NAME] == {
                           "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}
            assert enabled == {f"{h}:{mesh.SIDECAR_HTTP_PORT}" for h in mesh.PROVIDER_HOSTS.values()}
        else:
            assert disabled is False


def _field_differences(a: dict, b: dict) -> set[str]:
    out = set()
    for k in set(a) | set(b):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict) and k == "grpc_service":
                out |= {f"grpc_service.{s}" for s in _field_differences(a[k], b[k])}
            else:
                out.add(k)
    return out


def test_the_envoy_extension_policy_says_what_the_source_says_as_far_as_envoy_gateway_can():
    (eep,) = _docs(REPO / "deploy" / "envoy-gateway" / "envoyextensionpolicy.yaml")
    (entry,) = eep["spec"]["extProc"]
    translated = eg_translate(entry, "ledgergate")["typed_config"]
    differs = _field_differences(translated, mesh.ext_proc_filter("ledgergate")["typed_config"])
    # Exactly the documented gaps, nothing else (processing modes, failure mode, timeouts and
    # attributes are equal).
    assert differs == set(mesh.EG_UNEXPRESSIBLE), differs


def test_with_the_patch_policy_envoy_gateways_filter_is_the_source(tmp_path):
    from tests import mesh_shapes

    pki = mesh_shapes.make_pki(tmp_path, ["api.openai.com"], "spiffe://cluster.local/ns/x/sa/y")
    cfg = mesh_shapes.envoy_gateway(mesh_shapes.Ports(1, 2, 3, 4, 5), pki, eg_translate)
    (epp,) = _docs(REPO / "deploy" / "envoy-gateway-with-patch-policy" / "envoypatchpolicy.yaml")
    patched = mesh_shapes.apply_envoy_patch_policy(cfg, epp)

    def eg_filter(c):
        hcm = c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        (f,) = [f for f in hcm["http_filters"] if f["name"] == mesh.EG_FILTER_NAME]
        f = copy.deepcopy(f)
        assert f.pop("disabled") is True   # EG: on per route
        return f

    f = eg_filter(patched)
    assert _without_cluster(f)["typed_config"] == mesh._protojson(_without_cluster(SOURCE_FILTER)["typed_config"])
    # Without the policy the gaps are there (the check is not vacuous).
    assert _without_cluster(eg_filter(cfg))["typed_config"] != mesh._protojson(_without_cluster(SOURCE_FILTER)["typed_config"])


def test_every_generated_file_is_in_step():
    assert mesh.drifted() == [], "regenerate: python -m ext_proc.cli.mesh"


def test_the_drift_check_notices_a_changed_source(tmp_path, monkeypatch):
    text = mesh.SOURCE.read_text().replace("failure_mode_allow: false", "failure_mode_allow: true")
    changed = tmp_path / "ext_proc.yaml"
    changed.write_text(text)
    monkeypatch.setattr(mesh, "SOURCE", changed)
    stale = {p.relative_to(REPO).as_posix() for p in mesh.drifted()}
    assert {"envoy/local.yaml", "envoy/sidecar.yaml", "envoy/edge.yaml",
            "deploy/istio/sidecar/envoyfilter-ext-proc.yaml", "deploy/istio/egress-gateway/envoyfilter-ext-proc.yaml",
            "deploy/envoy-gateway/envoyextensionpolicy.yaml"} <= stale
    # The patch policy carries only what the EnvoyExtensionPolicy cannot: a changed message
    # timeout reaches the EnvoyExtensionPolicy, a changed gRPC timeout the patch policy.
    changed.write_text(mesh.SOURCE.read_text().replace("timeout: 30s", "timeout: 31s"))
    stale = {p.relative_to(REPO).as_posix() for p in mesh.drifted()}
    assert "deploy/envoy-gateway-with-patch-policy/envoypatchpolicy.yaml" in stale
    # And a copy edited by hand is noticed by the parsed comparison.
    edited = yaml.safe_load((REPO / "envoy" / "edge.yaml").read_text())
    _ext_proc_filters(edited)[0]["typed_config"]["message_timeout"] = "1s"
    monkeypatch.setattr(mesh, "SOURCE", REPO / "envoy" / "filters" / "ext_proc.yaml")
    assert _ext_proc_filters(edited)[0] != mesh.ext_proc_filter("ledgergate")


def test_only_the_filter_block_is_replaced():
    original = (REPO / "envoy" / "sidecar.yaml").read_text()
    # Another change edits a route timeout and the filter at the same time: only the filter reverts.
    edited = original.replace("timeout: 0s", "timeout: 600s", 1).replace("message_timeout: 10s", "message_timeout: 1s")
    out = mesh.replace_filter_block(edited)
    assert "timeout: 600s" in out and "message_timeout: 10s" in out and "message_timeout: 1s" not in out
    assert out == original.replace("timeout: 0s", "timeout: 600s", 1)


@pytest.mark.parametrize("text", [
    "http_filters:\n- name: envoy.filters.http.router\n",
    "a:\n- name: envoy.filters.http.ext_proc\n  x: 1\nb:\n- name: envoy.filters.http.ext_proc\n  x: 2\n",
], ids=["none", "two"])
def test_replacing_needs_exactly_one_block(text):
    with pytest.raises(ValueError):
        mesh.replace_filter_block(text)


def test_an_eep_that_cannot_say_the_source_is_refused(tmp_path, monkeypatch):
    text = mesh.SOURCE.read_text().replace("request_header_mode: SEND", "request_header_mode: SKIP")
    changed = tmp_path / "ext_proc.yaml"
    changed.write_text(text)
    monkeypatch.setattr(mesh, "SOURCE", changed)
    with pytest.raises(ValueError, match="request headers"):
        mesh.envoy_extension_policy()


# --- the providers: hosts from the registry, paths from envoy/local.yaml ------------------------

def _parsed_routes_and_clusters(path) -> tuple[list[dict], dict[str, dict]]:
    cfg = yaml.safe_load(path.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (vh,) = hcm["route_config"]["virtual_hosts"]
    return vh["routes"], {c["name"]: c for c in cfg["static_resources"]["clusters"]}


def test_the_hand_written_local_config_routes_to_and_has_a_cluster_for_every_provider():
    routes, clusters = _parsed_routes_and_clusters(REPO / "envoy" / "local.yaml")
    upstreams = registry.upstreams()
    assert {u.cluster for u in upstreams} == set(clusters) - {"ledgergate"}
    assert {u.cluster for u in upstreams} == {r["route"]["cluster"] for r in routes if r["match"]["prefix"] != "/"}


@pytest.mark.parametrize("name", ["sidecar.yaml", "edge.yaml"])
def test_the_provider_configs_route_like_local_to_the_registry_hosts_over_checked_tls(name):
    local_routes, _ = _parsed_routes_and_clusters(REPO / "envoy" / "local.yaml")
    routes, clusters = _parsed_routes_and_clusters(REPO / "envoy" / name)
    hosts = {u.cluster: u for u in registry.upstreams()}
    assert [(r["match"], r["route"]["cluster"], r["route"].get("prefix_rewrite")) for r in routes] == \
        [(r["match"], r["route"]["cluster"], r["route"].get("prefix_rewrite")) for r in local_routes]
    assert all(r["route"]["host_rewrite_literal"] == hosts[r["route"]["cluster"]].host for r in routes)
    for u in hosts.values():
        c = clusters[u.cluster]
        sa = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert (sa["address"], sa["port_value"]) == (u.host, u.port)
        tls = c["transport_socket"]["typed_config"]
        assert tls["sni"] == u.sni
        assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": u.host}}]


def test_a_provider_without_a_local_route_stops_the_rendering(tmp_path, monkeypatch):
    text = (REPO / "envoy" / "local.yaml").read_text()
    start = text.index('- {match: {prefix: "/mistral/v1/"}')
    end = text.index("- {match: {prefix: \"/\"}")
    local = tmp_path / "local.yaml"
    local.write_text(text[:start] + text[end:])
    monkeypatch.setattr(mesh, "LOCAL", local)
    with pytest.raises(ValueError, match="no route to the provider cluster.*mistral"):
        mesh.rendered_files()


def test_only_the_marked_provider_blocks_are_replaced():
    original = (REPO / "envoy" / "edge.yaml").read_text()
    edited = original.replace("host_rewrite_literal: api.mistral.ai", "host_rewrite_literal: evil.example", 1) \
        .replace("xff_num_trusted_hops: 0", "xff_num_trusted_hops: 1")
    out = mesh.replace_provider_blocks(edited)
    assert out == original.replace("xff_num_trusted_hops: 0", "xff_num_trusted_hops: 1")
    with pytest.raises(ValueError, match="END provider routes"):
        mesh.replace_provider_blocks(original.replace(mesh.ROUTES_END, "# the end"))
