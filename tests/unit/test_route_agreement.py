"""Envoy's route tables and ledgergate's surfaces agree: a request ledgergate reads (and audits)
as provider P goes, in every shipped flavour, to P's cluster. Before, Gemini's v1 calls
(POST /v1/models/NAME:generateContent) matched OpenAI's `/v1/models` prefix first and went to
api.openai.com while their records said gemini, and tuned-model calls fell to the catch-all."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml

from ext_proc.cli import mesh
from ext_proc.providers import registry

REPO = Path(__file__).resolve().parents[2]

REQUESTS = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("POST", "/v1/embeddings"),
    ("POST", "/v1/completions"), ("POST", "/v1/moderations"), ("GET", "/v1/models"), ("GET", "/v1/models/gpt-4o"),
    ("POST", "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"),
    ("POST", "/openai/deployments/emb/embeddings?api-version=2024-10-21"),
    ("POST", "/openai/deployments/legacy/completions?api-version=2024-10-21"),
    ("POST", "/openai/v1/chat/completions"), ("POST", "/openai/v1/responses"), ("POST", "/openai/responses"),
    ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
    ("POST", "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse"),
    ("POST", "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse-stream"),
    ("POST", "/model/amazon.titan-text-express-v1/invoke"),
    ("POST", "/model/amazon.titan-text-express-v1/invoke-with-response-stream"),
    *[(m, f"{v}/{kind}/gemini-2.0-flash:{action}") for v in ("/v1beta", "/v1") for kind in ("models", "tunedModels")
      for m, action in (("POST", "generateContent"), ("POST", "streamGenerateContent?alt=sse"),
                        ("POST", "countTokens"), ("POST", "embedContent"))],
    ("POST", "/mistral/v1/chat/completions"),
]


def _expected_cluster(method: str, path: str) -> str | None:
    surface = registry.match_surface(method, path)
    if surface is None:
        return None
    spec = registry.get(surface.provider)
    assert spec is not None
    return spec.cluster


def test_every_provider_is_sampled() -> None:
    providers = {s.provider for m, p in REQUESTS if (s := registry.match_surface(m, p)) is not None}
    assert providers == {s.name for s in registry.SPECS}
    assert {s.name for m, p in REQUESTS if (s := registry.match_surface(m, p)) is not None} >= {
        name for spec in registry.SPECS for name in spec.surfaces}


@cache
def _envoy_routes(path: Path) -> list[dict]:
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                rc = f.get("typed_config", {}).get("route_config")
                if rc:
                    (vhost,) = rc["virtual_hosts"]
                    return list(vhost["routes"])
    raise AssertionError(f"{path}: no route table")


def _envoy_cluster(routes: list[dict], method: str, path: str) -> str:
    """Envoy's route matching as these tables use it: first route whose prefix and `:method` match."""
    bare = path.split("?", 1)[0]
    for r in routes:
        m = r["match"]
        if not bare.startswith(m["prefix"]):
            continue
        if any(h["name"] == ":method" and h["string_match"]["exact"] != method for h in m.get("headers") or ()):
            continue
        return str(r["route"]["cluster"])
    raise AssertionError(f"no route for {method} {path}")


@pytest.mark.parametrize("flavour", ["local.yaml", "sidecar.yaml", "edge.yaml"])
@pytest.mark.parametrize(("method", "path"), REQUESTS)
def test_envoy_sends_each_surface_to_its_provider(flavour: str, method: str, path: str) -> None:
    expected = _expected_cluster(method, path)
    assert expected is not None, f"{method} {path} is no surface"
    assert _envoy_cluster(_envoy_routes(REPO / "envoy" / flavour), method, path) == expected


def _segments(p: str) -> list[str]:
    return [s for s in p.split("/") if s]


def _gateway_api_backend(routes: list[dict], method: str, path: str) -> str:
    """Gateway API's precedence: the longest matching path prefix (by whole segments), then a
    rule with a method match over one without."""
    bare = _segments(path.split("?", 1)[0])
    best: tuple[int, int, str] | None = None
    for route in routes:
        for rule in route["spec"]["rules"]:
            for m in rule["matches"]:
                prefix = _segments(m["path"]["value"])
                if bare[:len(prefix)] != prefix or m.get("method", method) != method:
                    continue
                key = (len(m["path"]["value"].rstrip("/")), 1 if "method" in m else 0,
                       str(rule["backendRefs"][0]["name"]))
                if best is None or key[:2] > best[:2]:
                    best = key
    assert best is not None, f"no HTTPRoute for {method} {path}"
    return best[2]


@cache
def _httproutes() -> list[dict]:
    return mesh.envoy_gateway_httproutes()


# Azure OpenAI's host is per resource (<resource>.openai.azure.com), so the mesh manifests carry no
# Azure route (docs/deploy-mesh.md); its requests are checked in the Envoy flavours only.
@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p in REQUESTS if not p.startswith("/openai/")])
def test_envoy_gateway_sends_each_surface_to_its_provider(method: str, path: str) -> None:
    routes = _httproutes()
    assert _gateway_api_backend(routes, method, path) == _expected_cluster(method, path)
