"""Secrets written with accented letters (and other one-letter look-alikes: a stroke, a small
capital) in place of their plain letters, at random positions: `ÁKIA…`, `AKÍA…`, `ghp_…ó…`,
`sk-prój-…`, `jané.dóe@exámple.com`, `pässword=…`, `SSÑ 536228726`, `-----BEGIN RSÁ PRIVATE
KEY-----`. A reader (a person, a model) reads through the accents; the classifier reads them
folded to their base letters (classify/normalize.py), and the redaction masks the raw characters.

The accented forms here are built from Unicode composition (a letter and a combining mark that
NFC composes into one code point), not from the classifier's own table, so the tests fail on
a classifier that does not fold them. Request side: the classifier's findings and the request
pipeline; response side: the streaming inspector, chunked at random, read as the SDKs read it.
"""

from __future__ import annotations

import base64
import json
import random
import string
import unicodedata

import pytest

from ext_proc.classify import Classifier, redact
from tests.unit.test_pipeline import decide, head
from tests.unit.test_response_leaks import assert_not_intact, build, longest_part, released, sdk_view

CLF = Classifier()
CASES = 30

# Combining marks that compose with Latin letters (acute, grave, circumflex, tilde, macron,
# breve, dot above, diaeresis, ring, double acute, caron, hook above, dot below, cedilla, ogonek).
_MARKS = [0x301, 0x300, 0x302, 0x303, 0x304, 0x306, 0x307, 0x308, 0x30A, 0x30B, 0x30C, 0x309,
          0x323, 0x327, 0x328]
# Letters with something drawn on them that no decomposition describes, and small capitals.
_DRAWN = {"o": "\u00f8", "O": "\u00d8", "l": "\u0142", "L": "\u0141", "d": "\u0111", "D": "\u0110",
          "h": "\u0127", "i": "\u0268", "b": "\u0180", "z": "\u01b6", "t": "\u0167"}


def _look_alikes() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for letter in string.ascii_letters:
        forms = []
        for mark in _MARKS:
            composed = unicodedata.normalize("NFC", letter + chr(mark))
            if len(composed) == 1:
                forms.append(composed)
        if letter in _DRAWN:
            forms.append(_DRAWN[letter])
        if letter.isupper() and letter not in "COSUVWXZ":        # these read as lower case
            try:
                forms.append(unicodedata.lookup(f"LATIN LETTER SMALL CAPITAL {letter}"))
            except KeyError:
                pass
        out[letter] = forms
    return out


LOOK_ALIKES = _look_alikes()


def accented(text: str, rnd: random.Random, *, at_least: int = 1, most: int = 3,
             within: tuple[int, int] | None = None) -> str:
    """`text` with 1..`most` of its letters (in `within`, default all) replaced by look-alikes."""
    lo, hi = within or (0, len(text))
    places = [i for i in range(lo, hi) if LOOK_ALIKES.get(text[i])]
    chosen = rnd.sample(places, min(len(places), rnd.randint(at_least, most)))
    chars = list(text)
    for i in chosen:
        chars[i] = rnd.choice(LOOK_ALIKES[text[i]])
    out = "".join(chars)
    assert out != text
    return out


def _rand(rnd: random.Random, alphabet: str, n: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


_B32 = string.ascii_uppercase + "234567"
_ALNUM = string.ascii_letters + string.digits


def _ssn(rnd: random.Random) -> str:
    return f"{rnd.randint(1, 665):03d}{rnd.randint(1, 99):02d}{rnd.randint(1, 9999):04d}".replace("666", "667")


def _pem(rnd: random.Random) -> str:
    body = base64.b64encode(rnd.randbytes(300)).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----"


def written(kind: str, rnd: random.Random) -> tuple[str, str, str]:
    """(what is written, the part of it that must not survive, the label) for one random secret
    of `kind` with accents at random places (the key's prefix included), a secret the classifier
    finds when it is written without them."""
    while True:
        text, must_go, label, plain = _written(kind, rnd)
        if any(f.label == label for f in CLF.scan(plain)):
            return text, must_go, label


def _written(kind: str, rnd: random.Random) -> tuple[str, str, str, str]:
    if kind == "aws":
        key = rnd.choice(["AKIA", "ASIA"]) + _rand(rnd, _B32, 16)
        value = accented(key, rnd)
        return value, value, "secret.aws_access_key", key
    if kind == "aws_prefix":          # at least one accent in the prefix a rule keys on
        key = "AKIA" + _rand(rnd, _B32, 16)
        value = accented(key, rnd, within=(0, 4), most=2)
        return value, value, "secret.aws_access_key", key
    if kind == "github":
        plain = "ghp_" + _rand(rnd, _ALNUM, 36)
        value = accented(plain, rnd)
        return value, value, "secret.github_token", plain
    if kind == "openai":
        plain = "sk-proj-" + _rand(rnd, _ALNUM, 48)
        value = accented(plain, rnd, within=(0, 12))
        return value, value, "secret.openai_key", plain
    if kind == "email":
        first, last = _rand(rnd, string.ascii_lowercase, rnd.randint(3, 8)), _rand(rnd, string.ascii_lowercase, 6)
        domain = _rand(rnd, string.ascii_lowercase, rnd.randint(5, 10))
        plain = f"{first}.{last}@{domain}.com"
        value = accented(plain, rnd)
        return value, value, "pii.email", plain
    if kind == "password":
        label = rnd.choice(["password", "passwd", "api_key", "secret", "token"])
        value = _rand(rnd, string.ascii_letters, 6) + _rand(rnd, string.digits, 3) + "!" + _rand(rnd, _ALNUM, 4)
        label_written = accented(label, rnd, most=2)
        return f"{label_written}={value}", value, "secret.generic", f"{label}={value}"
    if kind == "ssn":                 # nine bare digits are an SSN only with its label word
        label = rnd.choice(["SSN", "ssn", "social security number", "Social Security"])
        digits = _ssn(rnd)
        return f"{accented(label, rnd, most=2)}: {digits}", digits, "pii.us_ssn", f"{label}: {digits}"
    if kind == "pem":
        block = _pem(rnd)
        head_end = block.index("\n")
        body = block[head_end + 1:block.index("\n-----END")]
        return accented(block, rnd, within=(5, head_end - 5), most=2), body, "secret.private_key", block
    raise AssertionError(kind)


KINDS = ["aws", "aws_prefix", "github", "openai", "email", "password", "ssn", "pem"]


def _needle(text: str, must_go: str) -> str:
    return must_go or text


@pytest.mark.parametrize("kind", KINDS)
def test_an_accented_secret_is_found_and_its_raw_characters_masked(kind):
    rnd = random.Random(f"accent/{kind}")
    for _ in range(CASES):
        text, must_go, label = written(kind, rnd)
        needle = _needle(text, must_go)
        before = rnd.choice(["", "here: ", "Voilà la clé — ", "naïve café: ", "x\n"])
        after = rnd.choice(["", " merci", " (Größe)", "\n"])
        doc = before + text + after
        start = len(before) + text.index(needle)
        end = start + len(needle)
        found = [f for f in CLF.scan(doc) if f.label == label]
        assert any(f.start <= start and end <= f.end for f in found), (kind, doc[:120], found)
        masked, _ = redact(doc, found, {"*": "mask"}, hash_key=b"k" * 32)
        assert needle not in masked
        assert longest_part(needle, [masked]) < 6, (kind, masked[:120])
        assert masked.startswith(before) and masked.endswith(after)     # the rest of the text stays


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_accented_secret_never_reaches_the_provider(kind, path):
    rnd = random.Random(f"accent-request/{kind}/{path}")
    for _ in range(CASES // 3):
        text, must_go, _label = written(kind, rnd)
        needle = _needle(text, must_go)
        msg = {"role": "user", "content": [{"type": "text", "text": "note: " + text + " thanks"}]}
        body: dict = {"model": "m", "messages": [msg]}
        if path == "/v1/messages":
            body["max_tokens"] = 64
        raw = json.dumps(body, ensure_ascii=rnd.random() < 0.5).encode()
        v = decide(raw, head(path))
        record = json.dumps(v.record.to_dict(), ensure_ascii=False)
        assert needle not in record
        if v.forward:
            sent = json.loads(v.new_body if v.new_body is not None else raw)
            strings = [p["text"] for m in sent["messages"] for p in m["content"]]
            assert longest_part(needle, strings) < 6, (kind, strings)


FRAMINGS = ["chat.content", "chat.arguments", "responses.output_text", "anthropic.text",
            "anthropic.partial_json", "gemini.sse", "converse.text", "whole.content"]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_accented_secret_never_reaches_the_client_whole_or_in_part(kind, framing):
    rnd = random.Random(f"accent-response/{kind}/{framing}")
    for _ in range(4):
        text, must_go, _label = written(kind, rnd)
        surface, ctype, body = build(framing, text, rnd)
        out, _ins = released(surface, ctype, body, rnd)
        assert_not_intact(_needle(text, must_go), sdk_view(out))


@pytest.mark.parametrize("text", [
    "Élodie Müller habite à Besançon depuis février; elle préfère le café crème.",
    "Der Größenwahn des Bürgermeisters: Straße gesperrt, Öffnungszeiten geändert.",
    "La señora Agustín Cárdenas vive en España, compañía de Peña y Muñoz.",
    "Børneværnskonsulent Søren Ørsted, Odborník na životné prostredie, Riaditeľ školy Döbeln.",
    "José Martín Téllez, Peña Nieto, São Paulo, Kraków, Łódź, Dvořák, Ærøskøbing, Börner.",
])
def test_accented_prose_is_not_a_finding_nor_a_label_word(text):
    # Folded, the words are ordinary words: no key or address reads out of them, and none is
    # read as the label word that makes a bare number an SSN, a phone or a date of birth
    # (Agustín, Martín, Téllez, Børne, Odborník, Döbeln hold tin, tel, born, dob once folded).
    assert CLF.scan(text) == []
    tail = " 2015-03-12 4155550123 536228726"
    got = {(f.label, f.start, f.end) for f in CLF.scan(text + tail) if f.confidence >= 50}
    plain = {(f.label, f.start, f.end) for f in CLF.scan("x" * len(text) + tail) if f.confidence >= 50}
    assert got == plain


@pytest.mark.parametrize("text,label", [
    ("Jean, né le 12 mars 1985 à Lyon", "pii.date_of_birth"),
    ("Jean, NÉ LE lundi 12/03/1985", "pii.date_of_birth"),
    ("Elle est née le 3 février 1990", "pii.date_of_birth"),
    ("date de naissance : 12 août 1985", "pii.date_of_birth"),
    ("patientDob 1985-03-12", "pii.date_of_birth"),
    ("DOB: 1985-03-12", "pii.date_of_birth"),
    ("Númèro de SSÑ 536228726", "pii.us_ssn"),
    ("taxpayer TIN: 536228726", "pii.us_ssn"),
    ("Téléphone 4155550123", "pii.phone"),
    ("homeTel 4155550123", "pii.phone"),
])
def test_accented_and_camel_case_label_words_still_count(text, label):
    assert any(f.label == label and f.confidence >= 50 for f in CLF.scan(text)), CLF.scan(text)


@pytest.mark.parametrize("text", [
    "Il ne le savait pas avant le 12/03/2020.",
    "dobject Invoice date 2007-02-03",     # a tool schema read glued: "d" then "object" is no "dob"
    "Agustín Martin 536228726",
    "Hotel Riaditeľ 4155550123",
])
def test_label_words_inside_other_words_do_not_count(text):
    assert [f for f in CLF.scan(text) if f.confidence >= 50] == []
