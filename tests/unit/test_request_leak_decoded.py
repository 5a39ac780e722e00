"""Request-side leak family: values a model reads through an encoding at sight. A secret written
percent-encoded (`jane.doe%40example.com`, `4111%201111%201111%201111`), as HTML character
references (decimal, hex, named), as literal `\\u`/`\\x` escapes in prose, or whole in base64,
base64url or hex, anywhere in any string or key of any surface's body, never reaches the provider
in any readable form: the forwarded body is read decoded every one of those ways (by the standard
library, not by the code under test) and must not hold the value; a deny is fine.

And the other way: ordinary text with encodings in it (URLs with `%20`, HTML with `&amp;`, code
with `\\n` and `\\u00e9` escapes, base64 images, hashes, UUIDs, git SHAs in prose) gives no finding.
"""

from __future__ import annotations

import base64
import binascii
import html
import html.entities
import json
import random
import re
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.classify import Classifier
from ext_proc.classify import decode as decode_mod
from ext_proc.classify.decode import Decoder
from ext_proc.classify.normalize import fold_plain
from ext_proc.pipeline.budget import BudgetedClassifier
from ext_proc.pipeline.inspect import classify_document
from ext_proc.providers import match_surface
from ext_proc.providers.adapters import parse_request
from ext_proc.providers.document import read_document
from tests.unit.test_pipeline import chat, decide, head
from tests.unit.test_request_leaks import BODIES, _decide_redacting_secrets, _get, _places

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


_PLAIN = Classifier()


def _secrets(rng: random.Random) -> dict[str, tuple[str, str]]:
    """name -> (the value as written before encoding, the characters that must not survive),
    random each time: a Luhn-valid card, an address, an AWS key, a GitHub token, a JWT, a password;
    each one the classifier finds written plainly (a random key it reads as too regular is drawn again)."""
    while True:
        out = _draw_secrets(rng)
        if all(_PLAIN.scan(written) for written, _ in out.values()):
            return out


def _draw_secrets(rng: random.Random) -> dict[str, tuple[str, str]]:
    digits = list(rng.choice(["4", "51", "52", "55"]))
    digits += [str(rng.randrange(10)) for _ in range(15 - len(digits))]
    total = 0
    for i, d in enumerate(reversed(digits)):      # Luhn: every second digit doubled, from the check digit's left
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    card = "".join(digits) + str((10 - total % 10) % 10)
    sep = rng.choice([" ", "-", ""])
    card_written = sep.join(card[i:i + 4] for i in range(0, 16, 4))
    user = "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 9)))
    email = f"{user}.{rng.choice(['doe', 'smith', 'li'])}@{rng.choice(['example.com', 'corp.io', 'mail.net'])}"
    b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    aws = "AKIA" + "".join(rng.choice(b32) for _ in range(16))
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    github = "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    pw = "".join(rng.choice(alnum) for _ in range(8)) + rng.choice("#$!*") + str(rng.randrange(100))
    return {"card": (card_written, card), "email": (email, email), "aws": (aws, aws), "github": (github, github),
            "jwt": (JWT, JWT), "password": ("password=" + pw, pw)}


_NAMED = {v: k for k, v in sorted(html.entities.html5.items(), key=lambda kv: -len(kv[0]))
          if len(v) == 1 and v.isascii() and k.endswith(";") and not k[0].isupper()}


def _some(value: str, rng: random.Random, enc) -> str:
    """VALUE with a random part of its characters (at least one) written by ENC."""
    at = {rng.randrange(len(value))} | {i for i in range(len(value)) if rng.random() < 0.3}
    return "".join(enc(c) if i in at else c for i, c in enumerate(value))


ENCODINGS = {
    "percent": lambda v, rng: _some(v, rng, lambda c: "".join(f"%{b:02X}" for b in c.encode())),
    "percent_quote": lambda v, rng: urllib.parse.quote(v, safe="") if urllib.parse.quote(v, safe="") != v
    else _some(v, rng, lambda c: f"%{ord(c):02x}"),
    "html_decimal": lambda v, rng: _some(v, rng, lambda c: f"&#{ord(c)};"),
    "html_hex": lambda v, rng: _some(v, rng, lambda c: f"&#x{ord(c):x};"),
    "html_named": lambda v, rng: "".join(f"&{_NAMED[c]}" for c in v[:1]) + v[1:] if v[0] in _NAMED
    else _some(v, rng, lambda c: f"&{_NAMED[c]}" if c in _NAMED else f"&#{ord(c)};"),
    "literal_u": lambda v, rng: _some(v, rng, lambda c: f"\\u{ord(c):04x}"),
    "literal_x": lambda v, rng: _some(v, rng, lambda c: f"\\x{ord(c):02x}"),
    "base64": lambda v, rng: base64.b64encode(v.encode()).decode(),
    "base64url": lambda v, rng: base64.urlsafe_b64encode(v.encode()).decode().rstrip("=" if rng.random() < 0.5 else ""),
    "hex": lambda v, rng: v.encode().hex() if rng.random() < 0.5 else v.encode().hex().upper(),
}


# --- what a reader of the forwarded body can decode (the standard library; trusted test data) ---

_RUN = re.compile(r"[A-Za-z0-9+/_\-]{8,}={0,2}")
_LITERAL = re.compile(r"\\u\{([0-9a-fA-F]{1,6})\}|\\U([0-9a-fA-F]{8})|\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")


def _literal(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        h = next(g for g in m.groups() if g)
        cp = int(h, 16)
        return chr(cp) if cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF else "?"
    return _LITERAL.sub(one, s)


def _runs_decoded(s: str) -> list[str]:
    out = []
    for run in _RUN.findall(s):
        body = run.rstrip("=")
        padded = body + "=" * (-len(body) % 4)
        for decode, arg in ((bytes.fromhex, body), (lambda x: base64.b64decode(x, validate=True), padded),
                            (base64.urlsafe_b64decode, padded)):
            try:
                out.append(decode(arg).decode("utf-8", "ignore"))
            except (ValueError, binascii.Error):
                pass
    return out


def _readings(obj, out: list[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _readings(k, out)
            _readings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _readings(v, out)
    elif isinstance(obj, str):
        for s in {obj, urllib.parse.unquote(obj), html.unescape(obj), _literal(obj)}:
            out.append(s)
            out.extend(_runs_decoded(s))


def _clean(text: str) -> str:
    return "".join(c for c in fold_plain(text) if c.isalnum() or c in "@.#$_")


def readable_anywhere(forwarded: bytes, needle: str) -> bool:
    """Whether NEEDLE can be read in the forwarded body decoded any of the ways above."""
    texts: list[str] = []
    _readings(json.loads(forwarded), texts)
    clean = _clean(needle)
    return any(clean in _clean(t) for t in texts)


def _place(body: dict, written: str, data) -> None:
    kind, where = data.draw(st.sampled_from(list(_places(body))))
    if kind == "string":
        parent, key = _get(body, where[:-1]), where[-1]
        s = parent[key]
        at = data.draw(st.integers(0, len(s)))
        gap = data.draw(st.sampled_from([" ", " see ", "\n", ": "]))
        parent[key] = s[:at] + gap + written + " " + s[at:]
    else:
        _get(body, where)[data.draw(st.sampled_from([written, "note " + written]))] = "v"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_encoded_secret_anywhere_never_reaches_the_provider_readable(encoding, data):
    rng = random.Random(data.draw(st.integers(0, 10**9)))
    path = data.draw(st.sampled_from(sorted(BODIES)))
    secrets = _secrets(rng)
    name = data.draw(st.sampled_from(sorted(secrets)))
    value, needle = secrets[name]
    written = ENCODINGS[encoding](value, rng)
    assert written != value
    body = json.loads(json.dumps(BODIES[path]))
    _place(body, written, data)
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert readable_anywhere(raw, needle)        # the check reads it in the body as sent
    # The default policy denies cards and secrets and masks addresses; the other one masks secrets
    # (and lets the rest through: only secrets are put to it), so their redaction is checked too.
    redacting = name not in ("card", "email") and data.draw(st.booleans())
    v = _decide_redacting_secrets(raw, path) if redacting else decide(raw, head(path))
    record = json.dumps(v.record.to_dict(), ensure_ascii=False)
    assert needle not in record and written not in record
    if not v.forward:
        return
    forwarded = v.new_body if v.new_body is not None else raw
    assert not readable_anywhere(forwarded, needle), (encoding, name, path, written, forwarded[:600])


def test_the_finding_covers_the_whole_encoded_run_and_the_record_has_its_raw_offsets():
    for text, run in [("mail jane.doe%40example.com now", "jane.doe%40example.com"),
                      ("card 4111&#32;1111&#x20;1111&#32;1111 ok", "4111&#32;1111&#x20;1111&#32;1111"),
                      ("x jane.doe&commat;example.com y", "jane.doe&commat;example.com"),
                      ("k " + base64.b64encode(b"AKIAIOSFODNN7QWERTYZ").decode() + " ok",
                       base64.b64encode(b"AKIAIOSFODNN7QWERTYZ").decode()),
                      ("h " + b"jane.doe@example.com".hex() + ".", b"jane.doe@example.com".hex())]:
        for second, v in enumerate((decide(chat(text)), _decide_redacting_secrets(chat(text)))):
            findings = v.record.to_dict()["classification"]["findings"]
            assert len(findings) == 1, (text, findings)
            start = text.index(run)
            assert (findings[0]["start"], findings[0]["end"]) == (start, start + len(run)), (text, findings)
            if v.new_body is not None:
                sent = json.loads(v.new_body)["messages"][0]["content"]
                assert sent == text[:start] + "[" + findings[0]["label"].upper() + "]" + text[start + len(run):]
            redacted = v.new_body is not None or not v.forward
            assert redacted or second and not findings[0]["label"].startswith("secret.")   # it masks secrets only


_AWS_B64 = base64.b64encode(b"AKIAIOSFODNN7QWERTYZ").decode()


@pytest.mark.parametrize(("left", "right", "needle"), [
    ("write to jane.doe%4", "0example.com please", "jane.doe@example.com"),
    ("write to jane.doe&#6", "4;example.com please", "jane.doe@example.com"),
    ("key " + _AWS_B64[:13], _AWS_B64[13:] + " ok", "AKIAIOSFODNN7QWERTYZ"),
    ("hex " + b"jane.doe@example.com".hex()[:30], b"jane.doe@example.com".hex()[30:] + " ok", "jane.doe@example.com"),
])
def test_a_value_encoded_and_split_across_parts_is_read_joined(left, right, needle):
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hello."}, {"type": "text", "text": left}, {"type": "text", "text": right}]}]}
    raw = json.dumps(body).encode()
    assert readable_anywhere(json.dumps({"joined": left + right}).encode(), needle)
    v = _decide_redacting_secrets(raw, "/v1/messages") if needle.startswith("AKIA") else decide(raw, head("/v1/messages"))
    assert not v.forward or not readable_anywhere(json.dumps({"joined": "".join(
        p["text"] for p in json.loads(v.new_body or raw)["messages"][0]["content"])}).encode(), needle)
    assert not v.forward or v.new_body is not None


def test_a_key_and_its_hex_value_are_read_together_and_a_decoded_hint_is_not_a_finding():
    """`"npi": "<hex of a Luhn-valid NPI>"` is an NPI its key names (90); the same hex under any
    other key decodes to a bare 10-digit number, a hint (40) that decoded noise must not make."""
    encoded = b"1234567893".hex()
    for key, want in (("npi", {"npi": "[PHI.US_NPI]"}), ("ref", None)):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": {key: encoded}}
        v = decide(json.dumps(body).encode())
        assert v.forward
        assert (json.loads(v.new_body)["metadata"] if v.new_body is not None else None) == want


# --- no new findings in ordinary text ---

def _png(rng: random.Random, n: int) -> str:
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(n)).decode()


NEGATIVES = [
    lambda r: f"See https://example.com/search?q=quarterly%20report%20{r.randint(2019, 2026)}&lang=en%2DUS for details.",
    lambda r: "Read https://docs.example.org/a%20b/c%2Fd?x=%E2%9C%93 and https://x.io/%7Euser/",
    lambda r: "<p>Tom &amp; Jerry &lt;3 &quot;cheese&quot; &nbsp;&mdash; &copy; 2024 &#8212; &#x2019;s</p>",
    lambda r: 'print("line one\\nline two\\tindented \\u00e9t\\u00e9 \\x1b[31mred\\x1b[0m")',
    lambda r: 'const s = "caf\\u00e9 \\u{1F600} \\U0001F600"; // unicode escapes in code',
    lambda r: "Here is the image: data " + _png(r, r.randint(200, 3000)) + " thanks",
    lambda r: "sha256 " + r.randbytes(32).hex() + " and md5 " + r.randbytes(16).hex(),
    lambda r: "commit " + r.randbytes(20).hex() + " (" + r.randbytes(20).hex()[:12] + ")",
    lambda r: "uuid " + "-".join(r.randbytes(16).hex()[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))),
    lambda r: "token id " + base64.urlsafe_b64encode(r.randbytes(r.randint(12, 64))).decode().rstrip("="),
    lambda r: "the internationalization of getElementsByClassName and /usr/local/lib/python3.11/site-packages",
    lambda r: "progress 50%25 done, 100% sure, printf(\"%02d %s %x\", n, s, h)",
    lambda r: "AT&T and R&D, &foo; is not an entity, nor is &#xZZ; or &#;",
    lambda r: "base64 of text is fine: " + base64.b64encode(b"hello world, how are you today?").decode(),
]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_ordinary_text_with_encodings_gives_no_finding(data):
    rng = random.Random(data.draw(st.integers(0, 10**9)))
    parts = [data.draw(st.sampled_from(NEGATIVES))(rng) for _ in range(data.draw(st.integers(1, 4)))]
    path = data.draw(st.sampled_from(sorted(BODIES)))
    body = json.loads(json.dumps(BODIES[path]))
    for text in parts:
        _place(body, text, data)
    raw = json.dumps(body, ensure_ascii=False).encode()
    v = decide(raw, head(path))
    rec = v.record.to_dict()
    assert v.forward and v.new_body is None, (parts, rec["classification"])
    assert rec["classification"]["summary"] == {}, parts


# --- bounds ---

def _document(body: dict, path: str = "/v1/chat/completions"):
    surface = match_surface("POST", path)
    parsed = parse_request(surface, json.dumps(body).encode(), max_bytes=16 << 20)
    return parsed, read_document(parsed)


def test_decoded_text_is_never_longer_and_maps_back_inside_the_raw_text():
    rng = random.Random(7)
    alphabet = ["%41", "%2", "%C3%A9", "&#64;", "&#x40;", "&amp;", "&bogus;", "\\u0040", "\\ud83d\\ude00", "\\x41",
                "\\u{40}", " ", "\n", "a", "Z", "=", "+", "/", "-", "é", "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=",
                "414b4941494f53464f444e4e374558414d504c45"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        dec = Decoder().decode(text)
        if dec is None:
            continue
        assert len(dec.text) <= len(text)
        prev = 0
        for p in dec.pieces:
            assert prev <= p.start < p.end <= len(dec.text)
            assert p.run_start <= p.raw_start < p.raw_end <= p.run_end <= len(text)
            assert p.end - p.start <= p.raw_end - p.raw_start
            prev = p.end
            assert (dec.raw_start(p.start), dec.raw_end(p.end)) == (p.raw_start, p.raw_end)
            assert (dec.decoded_at(p.raw_start), dec.decoded_at(p.raw_end)) == (p.start, p.end)
            assert dec.decoded_at(p.raw_start + 1) == p.end


def test_each_run_is_decoded_once_per_request(monkeypatch):
    calls: list[bytes] = []
    real = decode_mod._ambiguous
    monkeypatch.setattr(decode_mod, "_ambiguous", lambda run: calls.append(run) or real(run))
    run = base64.b64encode(b"jane.doe@example.com").decode()
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a " + run + " ok"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c " + run + " ok"}]}]}
    parsed, doc = _document(body, "/v1/messages")
    found = classify_document(Classifier(), doc, parsed.body)
    assert calls.count(run.encode()) == 1      # four reading views, the field view, two places
    assert sum(f.label == "pii.email" for f in found.logical) == 2


def test_a_payload_the_walk_decoded_is_not_decoded_again(monkeypatch):
    calls: list[bytes] = []
    real = decode_mod._ambiguous
    monkeypatch.setattr(decode_mod, "_ambiguous", lambda run: calls.append(run) or real(run))
    rng = random.Random(3)
    binary = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(600)).decode()     # kept as a value too
    text = base64.b64encode(b"notes: nothing secret in here at all").decode()          # a text attachment
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": binary}},
        {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": text}},
        {"type": "text", "text": "what is this?"}]}]}
    parsed, doc = _document(body, "/v1/messages")
    assert doc.payload_values
    classify_document(Classifier(), doc, parsed.body)
    assert not any(binary.encode() in c or c in binary.encode() for c in calls)
    assert not any(c in text.encode() for c in calls)


def test_decoded_text_counts_against_the_request_budget():
    encoded = base64.b64encode(("lorem ipsum dolor " * 2000).encode()).decode()
    noise = base64.b64encode(random.Random(1).randbytes(len(encoded) * 3 // 4)).decode()
    spent = {}
    for name, run in (("text", encoded), ("noise", noise)):
        parsed, doc = _document({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x " + run}]})
        budget = BudgetedClassifier(Classifier())
        classify_document(budget, doc, parsed.body)
        spent[name] = budget.to_record()["bytes"]
    assert spent["text"] - spent["noise"] >= len(encoded) * 3 // 4 * 0.9


@pytest.mark.parametrize("unit", ["%41", "&#64;", "&commat;", "\\u0040", "\\x41", "QUJD", "4142", "%", "&#", "\\u00"])
def test_hostile_encoded_text_is_linear(unit):
    # The collector is held off while timing: in the full suite's large heap one gen-2 collection
    # during the large body made it 11x the small one once (linear here: 20k -> 80k is 3.6x).
    import gc

    def cost(n: int) -> float:
        body = chat("x " + unit * n)
        best = float("inf")
        for _ in range(3):
            gc.collect()
            gc.disable()
            try:
                t = time.perf_counter()
                decide(body)
                best = min(best, time.perf_counter() - t)
            finally:
                gc.enable()
        return best
    small, large = cost(20_000), cost(80_000)
    assert large < 8 * small + 0.05, (unit, small, large)
