"""Loading policies: everything wrong is rejected with file:line and the key, nothing half-loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ext_proc.policy import PolicyError, load_policy, load_policy_text

MINIMAL = """
id: t
routes:
  - {id: chat, apis: [chat]}
rules:
  - id: permit-dev
    effect: permit
    when: {roles: [developer]}
"""


def problems_of(text: str, **kw) -> list[str]:
    with pytest.raises(PolicyError) as ei:
        load_policy_text(textwrap.dedent(text), source="p.yaml", **kw)
    assert ei.value.problems, "a PolicyError must list its problems"
    return ei.value.problems


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def test_minimal_policy_loads():
    p = load_policy_text(MINIMAL)
    assert p.id == "t" and len(p.version) == 64 and p.label is None


def test_malformed_yaml_reports_line():
    probs = problems_of("id: t\nrules:\n  - id: x\n    effect: [permit\n")
    assert len(probs) == 1 and probs[0].startswith("p.yaml:") and "malformed YAML" in probs[0]
    assert ":5:" in probs[0] or ":4:" in probs[0]


def test_unknown_key_names_key_and_line():
    probs = problems_of("""
        id: t
        rules:
          - id: r1
            effect: permit
            when:
              roles: [a]
              rolez: [b]
        """)
    assert probs == [probs[0]]
    assert probs[0].startswith("p.yaml:8: rules[0].when.rolez: unknown key 'rolez'")


def test_unknown_top_level_key():
    probs = problems_of("id: t\nrulez: []\n")
    assert probs[0].startswith("p.yaml:2: rulez: unknown key")


def test_wrong_type():
    probs = problems_of("id: t\nrules:\n  - id: r1\n    effect: permit\n    priority: high\n")
    assert probs[0].startswith("p.yaml:5: rules[0].priority: expected integer")


def test_unknown_label_and_label_pattern():
    probs = problems_of("""
        id: t
        rules:
          - id: r1
            effect: deny
            when: {labels: {any: [pii.emial, "phy.*"]}}
        """)
    assert any("unknown label 'pii.emial'" in p and "rules[0].when.labels.any[0]" in p for p in probs)
    assert any("'phy.*' matches no known label" in p for p in probs)


def test_custom_label_needs_dictionary():
    bad = problems_of("id: t\nrules:\n  - {id: r, effect: deny, when: {labels: {any: [custom.deals]}}}\n")
    assert "declare it under 'dictionaries'" in bad[0]
    ok = load_policy_text("id: t\ndictionaries: {deals: [Falcon]}\n"
                          "rules:\n  - {id: r, effect: deny, when: {labels: {any: [custom.deals]}}}\n")
    assert ok.dictionaries == {"deals": ("Falcon",)}


@pytest.mark.parametrize("pattern, message", [
    ("gpt-[45]*", "not supported"),
    ("(a+)+$", None),        # regex syntax is not special: matched literally, harmless
    ("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*", "more than 16 wildcards"),
    ("x" * 300, "is too long"),
    ("a\\d", "not supported"),
])
def test_pattern_safety(pattern, message):
    text = f"id: t\nrules:\n  - id: r\n    effect: permit\n    when: {{models: [{pattern!r}]}}\n"
    if message is None:
        p = load_policy_text(text)
        inp = {"model": "(a+)+$", "identity": {}, "route": {"path": "/"}}
        assert p.evaluate(inp).outcome == "permit"
        return
    probs = problems_of(text)
    assert any(message in p and "rules[0].when.models[0]" in p for p in probs), probs


def test_glob_with_many_stars_is_linear_time():
    # 16 wildcards against a long adversarial string: RE2, no backtracking blow-up.
    import time

    from ext_proc.policy.glob import Glob

    g = Glob("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b")
    t0 = time.process_time()
    assert not g.match("a" * 100_000)
    assert time.process_time() - t0 < 0.5


def test_duplicate_rule_ids_across_includes(tmp_path):
    write(tmp_path, "inc.yaml", "rules:\n  - {id: r1, effect: permit}\n")
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [inc.yaml]\nrules:\n  - {id: r1, effect: deny}\n")
    with pytest.raises(PolicyError) as ei:
        load_policy(root)
    msg = str(ei.value)
    assert "duplicate id 'r1'" in msg and "inc.yaml:2" in msg and "root.yaml:4" in msg


def test_duplicate_yaml_keys():
    probs = problems_of("id: t\nid: u\n")
    assert probs[0].startswith("p.yaml:2:") and "duplicate key 'id'" in probs[0]


def test_yaml_aliases_rejected_billion_laughs():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n"
    probs = problems_of(bomb)
    assert "aliases" in probs[0] and probs[0].startswith("p.yaml:2:")


def test_deeply_nested_yaml_rejected():
    probs = problems_of("id: " + "[" * 20000 + "]" * 20000 + "\n")
    assert probs and ("nested too deeply" in probs[0] or "expected" in probs[0])


def test_oversized_file_rejected(tmp_path):
    big = write(tmp_path, "big.yaml", "id: t\ndescription: '" + "x" * (3 * 1024 * 1024) + "'\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(big)


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"id: \xff\xfe\n")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy(p)


def test_circular_includes(tmp_path):
    write(tmp_path, "a.yaml", "includes: [b.yaml]\n")
    write(tmp_path, "b.yaml", "includes: [a.yaml]\n")
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [a.yaml]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy(root)
    assert any("circular include: root.yaml -> a.yaml -> b.yaml -> a.yaml" in p and "b.yaml:1" in p
               for p in ei.value.problems), ei.value.problems


def test_self_include(tmp_path):
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [root.yaml]\n")
    with pytest.raises(PolicyError, match="circular include"):
        load_policy(root)


def test_diamond_include_loaded_once(tmp_path):
    write(tmp_path, "common.yaml", "rules:\n  - {id: c, effect: permit}\n")
    write(tmp_path, "a.yaml", "includes: [common.yaml]\n")
    write(tmp_path, "b.yaml", "includes: [common.yaml]\n")
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [a.yaml, b.yaml]\n")
    p = load_policy(root)
    assert [r["id"] for r in p.compiled["rules"]] == ["c"]
    assert len(p.sources) == 4


def test_missing_include(tmp_path):
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [nope.yaml]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy(root)
    assert "root.yaml:2: includes[0]: included file not found" in ei.value.problems[0]


def test_root_only_keys_in_include(tmp_path):
    write(tmp_path, "inc.yaml", "id: other\nlabel: x\n")
    root = write(tmp_path, "root.yaml", "id: t\nincludes: [inc.yaml]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy(root)
    assert len(ei.value.problems) == 2 and all("only be set in the root" in p for p in ei.value.problems)


def test_missing_file():
    with pytest.raises(PolicyError, match="file not found"):
        load_policy("/nonexistent/policy.yaml")


def test_unknown_route_reference():
    probs = problems_of("id: t\nrules:\n  - {id: r, effect: permit, when: {routes: [nope]}}\n")
    assert "unknown route id 'nope'" in probs[0]


@pytest.mark.parametrize("snippet, message", [
    ("{id: r, effect: deny, status: 200}", "rules[0].status"),
    ("{id: r, effect: deny, status: 503}", "rules[0].status"),
    ("{id: r, effect: redact, redact: {pii.email: scramble}}", "is not one of"),
    ("{id: r, effect: redact}", "needs a 'redact' map"),
    ("{id: r, effect: permit, redact: {pii.email: mask}}", "only applies to redact rules"),
    ("{id: r, effect: permit, status: 403}", "only applies to deny rules"),
    ("{id: r, effect: deny, max_tokens: 5}", "does not apply to deny rules"),
    ("{id: r, effect: allow}", "is not one of"),
    ("{id: 'bad id!', effect: permit}", "does not match"),
    ("{effect: permit}", "'id' is required"),
    ("{id: r, effect: deny, when: {labels: {min_count: 2}}}", "needs at least one of any, all, none"),
    ("{id: r, effect: deny, when: {actor: maybe}}", "is not one of"),
    ("{id: r, effect: permit, when: {apis: [chatty]}}", "is not one of"),
])
def test_rule_shape_errors(snippet, message):
    probs = problems_of(f"id: t\nrules:\n  - {snippet}\n")
    assert any(message in p for p in probs), probs
    assert all(p.startswith("p.yaml:") for p in probs)


def test_all_problems_reported_at_once():
    probs = problems_of("""
        id: t
        rules:
          - {id: a, effect: permit, when: {roles: [x], colour: red}}
          - {id: a, effect: deny, when: {labels: {any: [pii.nope]}}}
          - {id: c, effect: observe, when: {models: ["[x]"]}}
        """)
    assert len(probs) == 1 and "colour" in probs[0]
    # Schema errors stop the file before semantic checks; fix them, then every semantic problem shows.
    probs2 = problems_of("""
        id: t
        rules:
          - {id: a, effect: permit, when: {roles: [x]}}
          - {id: a, effect: deny, when: {labels: {any: [pii.nope]}}}
          - {id: c, effect: observe, when: {models: ["[x]"]}}
        """)
    assert len(probs2) == 3, probs2


def test_response_rule_and_rate_limit_shape():
    probs = problems_of("""
        id: t
        response_rules:
          - {id: rr}
          - {id: rr2, marker_header: {name: "X-Bad Header", value: v}}
        rate_limits:
          - {id: l1, key: [subject], window_s: 60}
          - {id: l2, key: [password], requests: 1, window_s: 60}
        """)
    joined = "\n".join(probs)
    assert "response_rules[1].marker_header.name" in joined
    assert "rate_limits[1].key[0]" in joined


def test_semantic_response_and_limit_checks():
    probs = problems_of("""
        id: t
        response_rules:
          - {id: rr}
        rate_limits:
          - {id: l1, key: [subject], window_s: 60}
        """)
    joined = "\n".join(probs)
    assert "needs at least one of redact, block, marker_header" in joined
    assert "needs 'requests' and/or 'tokens'" in joined


def test_root_needs_id():
    probs = problems_of("rules: []\n")
    assert "'id' is required" in probs[0]


def test_dictionary_validation():
    probs = problems_of("id: t\ndictionaries:\n  Bad Name: [x]\n")
    assert "dictionaries" in probs[0]
    probs = problems_of("id: t\ndictionaries:\n  blank: ['   ']\n")
    assert "no non-blank terms" in probs[0]


def test_top_level_not_mapping():
    probs = problems_of("- just\n- a list\n")
    assert "must be a YAML mapping" in probs[0]


def test_multiple_documents_rejected():
    probs = problems_of("id: t\n---\nid: u\n")
    assert "exactly one YAML document" in probs[0]


def test_error_messages_do_not_echo_long_values():
    secret_like = "sk-" + "A" * 500
    probs = problems_of(f"id: t\nrules:\n  - {{id: r, effect: {secret_like}}}\n")
    assert all(len(p) < 400 for p in probs)
