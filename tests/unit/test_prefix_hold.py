"""The streamed-text hold-back holds only what could still become a finding (classify/prefix.py),
and releasing more eagerly changes nothing about what is found, redacted or blocked: a gate that
holds the classifier's longest finding gives the same result on every split of every text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.classify import Classifier
from ext_proc.classify.prefix import PrefixHold, Unsupported, reversed_prefix_pattern
from ext_proc.streaming.gate import Blocked, Ledger, ScanPolicy, TextGate

CLF = Classifier(custom_terms={"projects": ["Project Falcon", "Blue Harbor"]})
KEY = b"k" * 32

# One real example per rule (each is asserted to be found below), written as a model would.
ENTITIES = {
    "pii.email": "jane.doe@example.com",
    "pii.phone": "call me at (415) 555-2671",
    "pii.us_ssn": "my ssn is 536-22-8154",
    "pii.ip_address": "the host 10.20.30.40 answered",
    "pii.ip_address#v6": "host fe80::1ff:fe23:4567:890a here",
    "pii.iban": "IBAN DE89 3704 0044 0532 0130 00",
    "pii.date_of_birth": "born on March 3, 1990",
    "pci.card_number": "card 4111 1111 1111 1111",
    "phi.mrn": "MRN: 12345678",
    "secret.aws_access_key": "AKIAQ3EGRYLZ2X6OPXWB",
    "secret.openai_key": "sk-" + "a1B2c3D4e5F6g7H8i9J0" * 2 + "kLmNoPqR",
    "secret.generic": "password = S3cr3t!xYz9Q",
    "secret.private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----",
    "custom.projects": "the Project Falcon budget",
}
# Written to slip past a naive scanner: zero-width characters and full-width digits, which the
# classifier normalizes away.
DISGUISED = ("4111\u200b1111\u200b1111\u200b1111", "\uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 "
             "\uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11", "jane\u200d.doe@exa\u200bmple.com")
PROSE = ("Sure", "here", "is", "the", "summary", "of", "the", "quarter", ".", ",", "and", "figures", "look",
         "steady", "Thanks!", "(see", "table)", "1.", "2024", "v1.2.3", "ok:", "x", "-", "\n")


def _policy(prefix: bool, *, block: frozenset[str] = frozenset()) -> ScanPolicy:
    hold = 64 if prefix else CLF.max_match_chars
    return ScanPolicy(classifier=CLF, redact={label: "mask" for label in CLF.labels}, block=block,
                      hash_key=KEY, tenant="t", hold=hold, step=max(64, hold // 4),
                      long_hold=CLF.max_match_chars, prefix=CLF.prefix_hold if prefix else None)


def _run(policy: ScanPolicy, pieces: list[str]) -> tuple[str, list[tuple], str | None, list[int]]:
    gate, ledger = TextGate(policy, Ledger(), "t"), None
    ledger = gate.ledger
    out, released_after = [], []
    try:
        for p in pieces:
            out.append(gate.feed(p))
            released_after.append(gate.released_chars)
        out.append(gate.flush())
    except Blocked as exc:
        released_after.append(gate.released_chars)
        return "".join(out), [], exc.label, released_after
    reds = [(label, r["start"], r["end"]) for r in ledger.redactions for label in r.get("labels", [r["label"]])]
    return "".join(out), reds, None, released_after


def test_every_rule_is_analysed():
    for rule in CLF._rules:
        reversed_prefix_pattern(rule.pattern, after=32)   # raises Unsupported otherwise
    assert CLF.prefix_hold.available


def test_syntax_it_does_not_know_is_refused_and_the_gate_falls_back():
    with pytest.raises(Unsupported):
        reversed_prefix_pattern(r"(?<=a)b")
    assert not PrefixHold([r"(?<=a)b"], max_chars=10).available


@pytest.mark.parametrize("key", sorted(ENTITIES))
def test_every_beginning_of_a_finding_is_held(key):
    text, label = ENTITIES[key], key.split("#")[0]
    found = {f.label for f in CLF.scan("Note: " + text + " done")}
    assert label in found, (label, found)
    start = {"pii.phone": 11, "pii.us_ssn": 10, "pii.ip_address": 9, "pii.ip_address#v6": 5, "pii.iban": 5,
             "pii.date_of_birth": 8, "pci.card_number": 5, "custom.projects": 4}.get(key, 0)
    lead = "Note: " + text[:start]
    # A PEM block's finding runs on past the header its pattern matches: the gate holds the
    # rest of the block itself (gate._extend_hold), so only the header is the prefix's job.
    end = len("-----BEGIN PRIVATE KEY-----") if label == "secret.private_key" else len(text)
    for i in range(1, end - start + 1):
        tail = text[start:start + i]
        assert CLF.prefix_hold.hold(lead + tail) >= len(tail), (label, tail)


def test_prose_is_held_only_for_its_last_word():
    ph = CLF.prefix_hold
    assert ph.hold("Sure. The figures for the third") == len("third")
    assert ph.hold("You ") == 0 and ph.hold("Hello!") == 0   # a character before an IPv6 address is context
    assert ph.hold("The team expects the same next quarter. ") <= 1
    # A complete candidate stays held while its context words may still follow.
    assert ph.hold("number 123456789 is my") >= len("123456789 is my")


def _texts():
    piece = st.one_of(st.sampled_from(PROSE), st.sampled_from(sorted(ENTITIES.values())), st.sampled_from(DISGUISED))
    return st.lists(piece, min_size=1, max_size=14).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts(), data=st.data())
def test_releasing_early_finds_redacts_and_blocks_exactly_what_holding_everything_does(text, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=40))))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)]) if b > a]
    block = data.draw(st.sampled_from([frozenset(), frozenset({"pci.card_number"}), frozenset({"secret.openai_key"})]))
    eager = _run(_policy(True, block=block), pieces)
    careful = _run(_policy(False, block=block), pieces)
    assert eager[2] == careful[2]                      # the same block, or none
    if careful[2] is None:
        assert eager[:2] == careful[:2]                # the same text, the same redactions
    else:
        # Blocked: what went out before the block is the same text, and none of the blocked value.
        everything = _run(_policy(False), pieces)
        assert everything[0].startswith(eager[0])
        blocked_at = min(start for label, start, _end in everything[1] if label == careful[2])
        assert eager[3][-1] <= blocked_at


def test_the_first_words_go_out_while_a_card_number_is_held_whole():
    text = "Sure, here it is: 4111 1111 1111 1111 and that is all."
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    out, _, label, released_after = _run(_policy(True, block=frozenset({"pci.card_number"})), pieces)
    assert label == "pci.card_number"
    assert out.startswith("Sure") and not any(c.isdigit() for c in out)
    first = next(i for i, n in enumerate(released_after) if n)
    assert first <= 3  # "Sur", "e, ", "her": out after a word, not after 64 characters


def test_a_long_token_arriving_a_character_per_chunk_is_not_rescanned_whole_each_time(monkeypatch):
    # Settling every chunk must not turn a held token into quadratic work: a held tail that did
    # not move is rescanned only after it grew by a quarter (and at each scan step).
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 80   # ~2.8 K chars
    token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = "Here it is: " + token + " and that was all of it."
    scanned = []
    real_scan = CLF.scan
    monkeypatch.setattr(CLF, "scan", lambda t, **kw: scanned.append(len(t)) or real_scan(t, **kw))
    assert [f.label for f in real_scan(text)] == ["secret.jwt"]
    gate = TextGate(_policy(True, block=frozenset({"secret.jwt"})), Ledger(), "t")
    out = ""
    with pytest.raises(Blocked):
        for ch in text:
            out += gate.feed(ch) + gate.settle()
        gate.flush()
    assert "eyJ" not in out and out.startswith("Here it is")
    assert sum(scanned) < 40 * len(text)      # ~len(text)**2 / 2 if every character rescanned the token
