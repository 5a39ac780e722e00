"""Bounds of the streaming gate that the mutation run found unpinned (docs/testing.md): the cap
on listed redaction records, and a release never ending between the halves of a surrogate pair."""

from __future__ import annotations

from ext_proc.streaming.gate import MAX_REDACTION_RECORDS, Ledger, ScanPolicy, TextGate
from tests.unit.test_prefix_hold import CLF, KEY


def test_redaction_records_are_listed_up_to_the_cap_then_counted():
    ledger = Ledger()
    for i in range(MAX_REDACTION_RECORDS + 5):
        ledger.add_redaction({"label": "pii.email", "start": i, "end": i + 1})
    assert MAX_REDACTION_RECORDS == 1000   # the bound docs/audit-record.md promises for one outcome record
    assert len(ledger.redactions) == 1000 and ledger.redactions_not_listed == 5
    assert ledger.redactions[-1]["start"] == 999


def test_a_release_never_ends_on_the_first_half_of_a_surrogate_pair():
    """Text decoded from UTF-16 escapes may hold a pair as two code points; the cut of a release
    falls before the high half, so no released piece ends with half a character."""
    hold = 64
    policy = ScanPolicy(classifier=CLF, redact={}, block=frozenset(), hash_key=KEY, tenant="t",
                        hold=hold, step=hold, long_hold=0, prefix=None)
    plain = "words and more words " * 10
    pair = "\ud83d\ude00"
    # With a fixed hold the cut falls at len(text) - hold: put the pair across it.
    text = plain[:200 - hold - 1] + pair + plain[:hold - 1]
    assert text[len(text) - hold - 1] == "\ud83d"
    gate = TextGate(policy, Ledger(), "t")
    released = gate.feed(text)
    assert released and not ("\ud800" <= released[-1] <= "\udbff"), repr(released[-3:])
    assert released + gate.flush() == text


def _json_policy(hold: int = 32) -> ScanPolicy:
    return ScanPolicy(classifier=CLF, redact={"pii.email": "mask"}, block=frozenset(), hash_key=KEY, tenant="t",
                      hold=hold, step=hold, long_hold=0, prefix=None)


def test_json_text_is_scanned_as_the_application_decodes_it():
    """Tool-call arguments are JSON text: an address written with escapes (\\u0040 for @, \\n, a
    surrogate pair) is what json.loads gives the application, so it is what is scanned and
    redacted (found by `make mutation`: the escape decoding had no test of its own)."""
    import json as _json

    from ext_proc.streaming.gate import inspect_json_text

    for escaped in ("mail jane.doe\\u0040example.com\\nthanks \\ud83d\\ude00",
                    "\\ud83d\\ude00 \\t mail:\\njane.doe\\u0040example.com",
                    "mail \\ud83d\\ude00jane.doe\\u0040example.com"):
        out = inspect_json_text(_json_policy(), Ledger(), escaped, "t")
        decoded = _json.loads(f'"{out}"')        # still valid JSON text after redaction
        assert "jane.doe@example.com" not in decoded and "\U0001F600" in decoded, decoded
        assert decoded.replace("[PII.EMAIL]", "jane.doe@example.com") == _json.loads(f'"{escaped}"'), decoded


def test_json_text_arriving_in_pieces_decodes_escapes_split_between_them():
    import json as _json

    from ext_proc.streaming.gate import JsonTextGate

    escaped = "smile \\ud83d\\ude00 and mail jane.doe\\u0040example.com, " + "more words " * 12
    for size in (1, 3, 5, 7, 11):
        gate = JsonTextGate(_json_policy(), Ledger(), "t")
        out = "".join(gate.feed(escaped[i:i + size]) for i in range(0, len(escaped), size)) + gate.flush()
        decoded = _json.loads(f'"{out}"')
        assert "jane.doe@example.com" not in decoded and decoded.startswith("smile \U0001F600 and mail "), (size, out)


def test_a_token_longer_than_the_fixed_hold_is_kept_back_whole_while_it_arrives():
    """Under a fixed hold shorter than a token, the long hold keeps the unbroken run that crosses
    the cut until it ends, so the address is found whole and never released in part; a run
    longer than the long hold is released (found by `make mutation`: the long hold switched off
    or its floor moved passed every test)."""
    policy = ScanPolicy(classifier=CLF, redact={"pii.email": "mask"}, block=frozenset(), hash_key=KEY, tenant="t",
                        hold=8, step=8, long_hold=64, prefix=None)
    text = "some words here and there " * 3 + "jane.doe@example.com" + " and the tail of it" * 6
    for size in (3, 5, 7):
        gate = TextGate(policy, Ledger(), "t")
        pieces = [gate.feed(text[i:i + size]) for i in range(0, len(text), size)]
        out = "".join(pieces) + gate.flush()
        assert "jane" not in out and "[PII.EMAIL]" in out, (size, out)
        assert out.replace("[PII.EMAIL]", "jane.doe@example.com") == text
    # A run of non-space characters longer than the long hold is not held to the end.
    gate = TextGate(policy, Ledger(), "t")
    released = "".join(gate.feed(c * 10) for c in "ab" * 20)
    assert len(released) > 200, len(released)


def test_forgetting_released_edits_keeps_the_ones_still_to_be_written():
    """The streaming inspector drops the redactions of text already sent and keeps those of text
    still queued (found by `make mutation`: keeping the old ones and dropping the rest passed)."""
    from ext_proc.streaming.gate import JsonTextGate

    raw = "from jane.doe\\u0040example.com " + "filler words " * 8 + "to john.roe\\u0040example.org " + "end " * 8
    gate = JsonTextGate(_json_policy(), Ledger(), "t")
    gate.feed(raw)
    gate.flush()
    assert len(gate.edits) == 2
    second = raw.index("john.roe")
    gate.forget_edits_before(second - 3)      # the first address has been written out
    assert len(gate.edits) == 1
    rest = gate.edited(second - 3, len(raw), raw[second - 3:])
    assert "john.roe" not in rest and "[PII.EMAIL]" in rest, rest


def test_the_last_high_surrogate_is_not_split_from_its_pair_either():
    """U+DBFF, the last high surrogate, is one too (found by `make mutation`: `< 0xDBFF` passed)."""
    hold = 64
    policy = ScanPolicy(classifier=CLF, redact={}, block=frozenset(), hash_key=KEY, tenant="t",
                        hold=hold, step=hold, long_hold=0, prefix=None)
    plain = "words and more words " * 10
    text = plain[:200 - hold - 1] + "\udbff\udfff" + plain[:hold - 1]
    gate = TextGate(policy, Ledger(), "t")
    released = gate.feed(text)
    assert released and released[-1] != "\udbff"
    assert released + gate.flush() == text
