"""classify/extent.py: a secret's finding covers its whole value, and nothing after it."""

from __future__ import annotations

from ext_proc.classify import Finding
from ext_proc.classify.extent import whole_secrets


def _ends(text: str, f: Finding, limit: int = 60_000) -> int:
    return whole_secrets(text, [f], limit=limit)[0].end


def test_a_token_goes_on_to_the_end_of_its_run_but_not_over_a_full_stop_or_space():
    text = "tok eyJabc.eyJdef-ghi_jkl.sig-nat-ure. Next sentence."
    f = Finding("secret.jwt", 4, 12, 95, "structure")          # stopped inside the token
    assert text[4:_ends(text, f)] == "eyJabc.eyJdef-ghi_jkl.sig-nat-ure"


def test_a_finding_that_ends_where_its_value_ends_is_unchanged():
    text = "tok eyJabc.eyJdef, next"
    f = Finding("secret.jwt", 4, 17, 95, "structure")
    assert whole_secrets(text, [f], limit=100) == [f]


def test_only_secrets_are_extended_and_never_past_the_limit():
    text = "mail jane@example.com/abcdef " + "x" * 50
    f = Finding("pii.email", 5, 21, 90, None)
    assert whole_secrets(text, [f], limit=100) == [f]
    text = "key sk-" + "a" * 500 + " end"
    f = Finding("secret.openai_key", 4, 60, 95, None)
    assert _ends(text, f, limit=100) == 4 + 100


def test_a_key_block_goes_on_to_its_end_line_or_where_its_body_ends():
    body = "\n".join("QUJD" * 16 for _ in range(120))
    block = "-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n-----END RSA PRIVATE KEY-----"
    text = "see\n" + block + "\nThanks."
    f = Finding("secret.private_key", 4, 4 + 4096, 99, None)
    assert text[4:_ends(text, f)] == block
    # Without an END line the body's characters decide, as the rule's own check does: letters and
    # line breaks are body characters, so plain words right after it are masked too (over, not under).
    cut = "see\n" + block[:5000] + "\n\nThanks! (rest lost)"
    f = Finding("secret.private_key", 4, 4 + 4096, 99, None)
    assert cut[4:_ends(cut, f)] == block[:5000] + "\n\nThanks"
    whole = Finding("secret.private_key", 4, 4 + len(block), 99, "structure")   # END already in it
    assert whole_secrets(text, [whole], limit=60_000) == [whole]
