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


def test_many_findings_in_one_long_value_read_it_once():
    """Hostile input: a 1 MB run with a secret finding every 20 characters, and 30,000 key-block
    headers without an END line. Each finding used to read its value anew up to the 60,000-character
    limit (164 s of CPU for the first); the runs are now read once."""
    import time

    text = "x" * 1_000_000
    found = [Finding("secret.generic", i, i + 10, 60, None) for i in range(0, len(text) - 100, 20)]
    t = time.process_time()
    out = whole_secrets(text, found, limit=60_000)
    assert [f.end for f in out[:2]] == [60_000, 60_020] and out[-1].end == len(text)
    blocks = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n" * 30_000
    headers = [Finding("secret.private_key", i, i + 31, 99, None) for i in range(0, len(blocks), 37)]
    out = whole_secrets(blocks, headers, limit=60_000)
    assert out[0].end == 59_999 and out[-1].end == len(blocks) - 1
    assert time.process_time() - t < 5, "quadratic"


def test_a_value_is_followed_as_the_classifier_reads_it():
    """A key block whose header and END line are in look-alike dashes, a token with zero-width
    characters and full-width letters inside: the extent reads the normalized text, as the rules
    do, and maps the end back (the ASCII-only reading stopped at the rule's bound)."""
    body = "\n".join("QUJD" * 16 for _ in range(120))
    block = "\uff0d" * 5 + "BEGIN PRIVATE KEY\u2013----\n" + body + "\n-\u200b----END PRIVATE K\u0415Y\uff0d\uff0d\uff0d\uff0d\uff0d"
    text = "see\n" + block + "\nThanks."
    assert text[4:_ends(text, Finding("secret.private_key", 4, 4 + 4096, 99, None))] == block
    token = "eyJ" + "ab\u200bc\uff44" * 3000
    text = "tok " + token + "\uff0e" + "x" * 10 + " next"
    assert text[4:_ends(text, Finding("secret.jwt", 4, 4 + 4096, 95, None))] == token + "\uff0e" + "x" * 10


def test_normalized_at_inverts_original_span():
    from ext_proc.classify.normalize import normalize

    for text in ["plain ascii", "a\u200b\u200bb\uff43\ufb01x\u00a0y", "\u200b\u200b", "\uff41" * 5 + "z"]:
        norm = normalize(text)
        for i in range(len(norm.text)):
            os_, oe = norm.original_span(i, i + 1)
            assert norm.normalized_at(os_) <= i < norm.normalized_at(oe)
        assert norm.normalized_at(0) == 0 and norm.normalized_at(len(text)) == len(norm.text)


def test_many_findings_in_a_long_value_of_look_alikes_read_it_once():
    """The hostile shapes of the test above in characters that normalization changes: one
    normalization of the stretch the values can reach, runs read once."""
    import time

    t = time.process_time()
    text = "\uff41" * 1_000_000
    found = [Finding("secret.generic", i, i + 10, 60, None) for i in range(0, len(text) - 100, 20)]
    out = whole_secrets(text, found, limit=60_000)
    assert [f.end for f in out[:2]] == [60_000, 60_020] and out[-1].end == len(text)
    blocks = "-----BEGIN RSA PRIVATE KEY\uff0d\uff0d\uff0d\uff0d\uff0d\nAAAA\n" * 30_000
    headers = [Finding("secret.private_key", i, i + 31, 99, None) for i in range(0, len(blocks), 37)]
    out = whole_secrets(blocks, headers, limit=60_000)
    assert out[0].end == 59_999 and out[-1].end == len(blocks) - 1
    assert time.process_time() - t < 10, "quadratic"
