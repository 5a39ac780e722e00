"""A key read twice, as an issuer's key and as a generic assignment or Bearer credential, is one
finding under the specific label (classify/engine._drop_covered_generics), and only when that
masks no less: the generic value, followed as classify/extent.py follows it past its match, must
end inside the specific finding."""

from __future__ import annotations

import random
import string

import pytest

from ext_proc.classify import Classifier, Finding, engine, redact
from ext_proc.classify.extent import GENERIC_VALUE_CHAR, whole_secrets

ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


def _pick(rng: random.Random, chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


# label -> a generator of values the label's rule accepts (random, high entropy)
TOKENS = {
    "secret.github_token": lambda r: "ghp_" + _pick(r, ALNUM, 36),
    "secret.aws_access_key": lambda r: "AKIA" + _pick(r, string.ascii_uppercase + "234567", 16),
    "secret.stripe_key": lambda r: "sk_live_" + _pick(r, ALNUM, 24),
    "secret.openai_key": lambda r: "sk-proj-" + _pick(r, ALNUM, 48),
    "secret.anthropic_key": lambda r: "sk-ant-api03-" + _pick(r, ALNUM, 40),
    "secret.gitlab_token": lambda r: "glpat-" + _pick(r, ALNUM, 20),
    "secret.npm_token": lambda r: "npm_" + _pick(r, ALNUM, 36),
    "secret.google_api_key": lambda r: "AIza" + _pick(r, ALNUM, 35),
    "secret.digitalocean_token": lambda r: "dop_v1_" + _pick(r, HEX, 64),
    "secret.databricks_token": lambda r: "dapi" + _pick(r, HEX, 32),
}
# How a generic rule reads the same value: keyword assignments and an HTTP credential.
GENERIC_FORMS = ["password={}", "api_key: {}", "SECRET_TOKEN=\"{}\"", "auth_token => '{}'",
                 "access_key:={}", "Authorization: Bearer {}", "curl -H 'Authorization: Bearer {}'"]
# Characters a generic value goes on over but a token does not: the generic extent covers them.
VALUE_ONLY = "%!:$&#*?|^@"
STOPS = engine.GENERIC_VALUE_STOPS


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier()


def _masked(text: str, findings: list[Finding]) -> str:
    """What a forwarded request holds: findings followed to their value's end (as the request
    pipeline does) and masked."""
    whole = whole_secrets(text, findings, limit=100_000)
    out, _ = redact(text, whole, {"*": "mask"}, hash_key=b"k")
    return out


@pytest.mark.parametrize("label", sorted(TOKENS))
@pytest.mark.parametrize("form", GENERIC_FORMS)
def test_generic_reading_of_a_specific_key_is_one_finding(clf, label, form):
    rng = random.Random(f"{label}|{form}")
    token = TOKENS[label](rng)
    text = "config: " + form.format(token) + " \nnext line"
    start = text.index(token)
    on_value = [f for f in clf.scan(text) if f.start < start + len(token) and start < f.end]
    assert [(f.label, f.start, f.end) for f in on_value] == [(label, start, start + len(token))], text
    assert token not in _masked(text, clf.scan(text))


def test_both_readings_of_one_span_yield_the_specific_label():
    # the merge itself, on candidates as the rules hand them over: same span, two labels
    text = "token=" + "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7" + " ok"
    cands = [(6, 46, 65, "entropy", "secret.generic"), (6, 46, 95, "entropy", "secret.github_token")]
    kept = engine._drop_covered_generics(engine._resolve_overlaps(cands, len(text)), text)
    assert kept == [Finding("secret.github_token", 6, 46, 95, "entropy")]


def test_a_generic_finding_longer_than_the_specific_one_is_kept(clf):
    token = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7"
    text = f"password={token}%2Fmore!stuff rest"
    fs = clf.scan(text)
    g = [f for f in fs if f.label == "secret.generic"]
    assert g and text[g[0].start:g[0].end] == f"{token}%2Fmore!stuff"
    assert "secret.github_token" in {f.label for f in fs}
    out = _masked(text, fs)
    assert "2Fmore" not in out and "stuff" not in out and "rest" in out


def test_a_bearer_credential_the_extent_grows_is_kept(clf):
    # "Bearer" reads token characters only, so at scan time the generic finding ends where the
    # key ends; the extent then follows the generic value over "%2F...". Dropping it on equal
    # spans alone would leave "%2Fmore" in the forwarded text.
    token = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7"
    text = f"Authorization: Bearer {token}%2Fmore!x tail"
    fs = clf.scan(text)
    assert {"secret.generic", "secret.github_token"} <= {f.label for f in fs}
    out = _masked(text, fs)
    assert "2Fmore" not in out and "tail" in out


def test_a_value_that_reaches_the_end_of_the_text_is_kept(clf):
    # more of it may come (a streamed answer): the generic reading stays
    token = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7"
    fs = clf.scan(f"password={token}")
    assert {f.label for f in fs} == {"secret.generic", "secret.github_token"}


def test_a_generic_value_cut_inside_a_longer_jwt(clf):
    # the rule stops a generic value at 200 characters; inside a longer JWT it is dropped only when
    # the JWT's end also ends the generic value (a quote here), kept when more value characters
    # follow the JWT
    jwt = ("eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAi" + "QWxpY2VCb2JDYXJvbERhdmU" * 8
           + "IiwgImlhdCI6IDE3MDAwMDAwMDB9.X8nouyVW12YriIfc5KlscCf5JX4pXqWZmdeKgjjxcvw")
    closed = clf.scan(f"id_token='{jwt}' next")
    assert [f.label for f in closed] == ["secret.jwt"]
    text = f"id_token={jwt}%2Fx!y next"
    open_ = clf.scan(text)
    assert {"secret.jwt", "secret.generic"} <= {f.label for f in open_}
    assert "%2Fx!y" not in _masked(text, open_)


def test_a_less_confident_specific_finding_does_not_stand_for_the_generic_one():
    text = "token=abcdefgh12345 x"
    cands = [(6, 19, 80, "entropy", "secret.generic"), (6, 19, 60, None, "secret.twilio_key")]
    kept = engine._drop_covered_generics(engine._resolve_overlaps(cands, len(text)), text)
    assert {f.label for f in kept} == {"secret.generic", "secret.twilio_key"}


def test_stop_characters_end_a_generic_value_in_the_rule_and_in_the_extent(clf):
    for ch in STOPS:
        assert not GENERIC_VALUE_CHAR.match(ch), repr(ch)
        text = f"password=Xk3#pL9qWz2{ch}Rv8tYb7n"
        g = [f for f in clf.scan(text) if f.label == "secret.generic"]
        assert g and g[0].end == text.index(ch), repr(ch)
    for ch in VALUE_ONLY:
        assert GENERIC_VALUE_CHAR.match(ch)


def _masked_chars(text: str, findings: list[Finding]) -> set[int]:
    return {i for f in whole_secrets(text, findings, limit=100_000) for i in range(f.start, f.end)}


def test_random_placements_mask_no_less_and_name_the_key_once(clf, monkeypatch):
    """The family: any key, any generic form, any run of value-only characters after it (or none),
    any end (a stop character or the end of the text), any text around. Always: every character
    that every finding (the generic readings kept) would mask, followed to its value's end, is
    still masked. And when the value ends with the key, at a stop character: one finding on it,
    the specific one (two on the code before the drop)."""
    rng = random.Random(20261130)
    labels = sorted(TOKENS)
    for _ in range(600):
        label = rng.choice(labels)
        token = TOKENS[label](rng)
        form = rng.choice(GENERIC_FORMS)
        quoted = "\"" in form or "'" in form
        suffix = "" if quoted or rng.random() < 0.5 else (
            rng.choice(VALUE_ONLY) + _pick(rng, VALUE_ONLY + ALNUM, rng.randint(0, 11)))
        end = "" if not quoted and rng.random() < 0.2 else rng.choice(STOPS)
        before = _pick(rng, string.ascii_lowercase + " ", rng.randint(0, 30)).rstrip() + " "
        after = (" " + _pick(rng, string.ascii_lowercase + " ", rng.randint(0, 30))) if end else ""
        text = before + form.format(token + suffix) + (end if not quoted or end.strip() else " ") + after
        start = text.index(token)
        value_end = start + len(token) + len(suffix)
        fs = clf.scan(text)
        with monkeypatch.context() as m:
            m.setattr(engine, "_drop_covered_generics", lambda findings, _text: findings)
            every = clf.scan(text)
        assert _masked_chars(text, every) <= _masked_chars(text, fs), (text, fs, every)
        assert token not in _masked(text, fs)
        if not suffix and value_end < len(text) and text[value_end] in STOPS:
            on_value = [f for f in fs if f.start < value_end and start < f.end]
            assert [f.label for f in on_value] == [label], (text, on_value)


class _CountingText(str):
    """A text that counts the characters its finds read."""
    read = 0

    def find(self, sub, start=0, end=None):  # type: ignore[override]
        stop = len(self) if end is None else end
        i = str.find(self, sub, start, stop)
        _CountingText.read += (i + 1 if i != -1 else stop) - start
        return i


def test_the_stop_search_is_linear_in_the_text():
    # many generic findings inside one long specific one, no stop character until its end: the
    # search for each one's stop reuses what the one before read
    n = 2000
    text = _CountingText("k" * n + " end")
    stops = engine._FirstStop(text)
    _CountingText.read = 0
    for lo in range(10, n, 10):
        assert stops.find(lo, n + 1) == n
    assert _CountingText.read <= 2 * len(STOPS) * (n + 64)
