"""Versioning, the content-addressed store and hot reload."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from ext_proc.policy import PolicyError, PolicyHolder, PolicyStore, load_policy, load_policy_text

A = """
id: t
rules:
  - {id: p, effect: permit, when: {roles: [dev, ops]}}
  - {id: d, effect: deny, when: {labels: {any: ["secret.*"]}}}
"""


def test_version_is_sha256_of_canonical_compiled_form():
    p = load_policy_text(A)
    canonical = json.dumps(p.compiled, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert p.canonical == canonical
    assert p.version == hashlib.sha256(canonical).hexdigest()


def test_formatting_and_order_of_sets_do_not_change_the_version():
    reformatted = """
# a comment
id: t
rules:
  - id: p
    effect: permit
    when:
      roles: [ops, dev, dev]
  - id: d
    effect: deny
    when: {labels: {any: ["secret.*"]}}
"""
    assert load_policy_text(A).version == load_policy_text(reformatted).version


def test_semantic_changes_change_the_version():
    base = load_policy_text(A).version
    assert load_policy_text(A.replace("[dev, ops]", "[dev]")).version != base
    assert load_policy_text("label: v2\n" + A).version != base     # the label is part of the compiled form
    # Rule order matters (ties are broken by declaration order).
    swapped = A.replace("  - {id: p, effect: permit, when: {roles: [dev, ops]}}\n", "") + \
        "  - {id: p, effect: permit, when: {roles: [dev, ops]}}\n"
    assert load_policy_text(swapped).version != base


def test_store_roundtrip(tmp_path):
    store = PolicyStore(tmp_path / "store")
    p = load_policy_text("label: release-1\n" + A)
    v = store.put(p)
    assert v == p.version
    f = tmp_path / "store" / f"{v}.json"
    assert hashlib.sha256(f.read_bytes()).hexdigest() == v
    q = store.get(v)
    assert q.version == v and q.label == "release-1" and q.id == "t"
    x = {"identity": {"roles": ["dev"]}, "route": {"path": "/"}, "classification": {}}
    assert q.evaluate(x).to_record() == p.evaluate(x).to_record()
    assert store.put(p) == v and store.versions() == [v]


def test_store_rejects_tampering_and_bad_versions(tmp_path):
    store = PolicyStore(tmp_path)
    p = load_policy_text(A)
    v = store.put(p)
    path = tmp_path / f"{v}.json"
    path.write_bytes(path.read_bytes().replace(b'"permit"', b'"deny"  '))
    with pytest.raises(PolicyError, match="does not hash"):
        store.get(v)
    for bad in ("../../etc/passwd", "ABC", "0" * 63, "g" * 64):
        with pytest.raises(PolicyError, match="not a policy version"):
            store.get(bad)
    with pytest.raises(PolicyError, match="not in the store"):
        store.get("0" * 64)


def write(p: Path, text: str) -> None:
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    # Make the change visible to mtime polling even on coarse-grained filesystems.
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_holder_reload_valid_and_invalid(tmp_path):
    f = tmp_path / "policy.yaml"
    write(f, A)
    errors: list[Exception] = []
    store = PolicyStore(tmp_path / "store")
    h = PolicyHolder(f, store=store, on_error=errors.append)
    v1 = h.current.version
    assert store.versions() == [v1]
    assert h.reload() is False                           # unchanged

    write(f, A + "  - {id: q, effect: permit, when: {roles: [qa]}}\n")
    assert h.changed_on_disk()
    assert h.reload() is True and h.current.version != v1
    v2 = h.current.version
    assert sorted(store.versions()) == sorted([v1, v2])

    write(f, A + "  - {id: q, effect: permit, when: {labels: {any: [pii.nope]}}}\n")
    assert h.reload() is False
    assert h.current.version == v2                       # old policy kept, whole
    assert len(errors) == 1 and isinstance(errors[0], PolicyError)
    assert "pii.nope" in h.last_error
    write(f, "id: t\nrules: [")                          # malformed YAML
    assert h.reload() is False and h.current.version == v2 and len(errors) == 2
    f.unlink()
    assert h.reload() is False and h.current.version == v2


def test_holder_start_fails_closed_on_invalid(tmp_path):
    f = tmp_path / "policy.yaml"
    write(f, "id: t\nrules: nope\n")
    with pytest.raises(PolicyError):
        PolicyHolder(f)


async def test_watch_picks_up_include_changes(tmp_path):
    inc = tmp_path / "inc.yaml"
    write(inc, "rules:\n  - {id: a, effect: permit, when: {roles: [dev]}}\n")
    root = tmp_path / "root.yaml"
    write(root, "id: t\nincludes: [inc.yaml]\n")
    h = PolicyHolder(root)
    v1 = h.current.version
    task = asyncio.create_task(h.watch(interval_s=0.02))
    try:
        write(inc, "rules:\n  - {id: a, effect: permit, when: {roles: [ops]}}\n")
        deadline = time.monotonic() + 5
        while h.current.version == v1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert h.current.version != v1
        assert h.current.compiled["rules"][0]["when"]["roles"] == ["ops"]
    finally:
        task.cancel()


def test_shipped_policies_roundtrip_through_store(tmp_path):
    root = Path(__file__).resolve().parents[2] / "policies"
    store = PolicyStore(tmp_path)
    for f in [root / "default.yaml", *sorted((root / "examples").glob("*.yaml"))]:
        p = load_policy(f)
        assert store.get(store.put(p)).version == p.version
