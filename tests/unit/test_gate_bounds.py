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
