"""The provider registry's invariants: one enum of names, every surface owned by its provider,
and the arrows of the import graph (providers never import streaming or the server; the server
never imports the mock providers)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from ext_proc.providers import Provider, registry
from ext_proc.server.config import PROVIDERS
from tests.support import REPO

PACKAGE = REPO / "ext_proc"


def test_every_enum_name_is_registered_once_and_every_surface_belongs_to_its_provider():
    assert len(registry.SPECS) == len(registry.PROVIDERS) == len(Provider)
    assert set(registry.PROVIDERS) == {p.value for p in Provider}
    for spec in registry.SPECS:
        for name in spec.surfaces:
            assert name.split(".", 1)[0] == spec.name, name
        assert spec.cluster in PROVIDERS and spec.genai_name and spec.upstream_host


def test_surfaces_of_one_provider_are_not_matched_by_another():
    probes = [("POST", "/v1/chat/completions"), ("POST", "/openai/v1/chat/completions"),
              ("POST", "/v1/messages"), ("POST", "/v1beta/models/g:generateContent"),
              ("POST", "/model/m/converse"), ("POST", "/mistral/v1/chat/completions"),
              ("GET", "/v1/models/gpt-4o"), ("POST", "/openai/deployments/d/chat/completions")]
    for method, path in probes:
        owners = [s.name for s in registry.SPECS if s.match(method, path) is not None]
        assert len(owners) == 1, (path, owners)


def test_a_surface_record_holds_the_provider_as_a_plain_string():
    surface = registry.match_surface("POST", "/v1/messages")
    assert type(surface.provider) is str and type(surface.to_record()["provider"]) is str


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_providers_and_wire_formats_import_nothing_above_them():
    for package, forbidden in (("providers", ("ext_proc.streaming", "ext_proc.server", "ext_proc.pipeline",
                                              "ext_proc.dev")),
                               ("wire", ("ext_proc.providers", "ext_proc.streaming", "ext_proc.server"))):
        for f in (PACKAGE / package).glob("*.py"):
            bad = [m for m in _imports(f) if m.startswith(forbidden)]
            assert not bad, (f.name, bad)


def test_the_server_never_imports_the_mock_providers():
    code = ("import sys, ext_proc.server.app, ext_proc.server.servicer, ext_proc.server.upstream; "
            "print([m for m in sys.modules if m.startswith('ext_proc.dev')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
