"""The streaming gate's promises, each driven the way the response inspector drives the gate (a
piece fed per upstream chunk, settled, flushed at the end; JSON text released as its raw events
with the gate's edits applied) and checked on what reached the client, not on the gate's state:

- a secret still arriving when a chunk ends is never released in part, whatever the split: a PEM
  block longer than the classifier's own match, a token longer than the hold, a finding split
  over many pieces;
- the whole text goes out once, in order, with only the findings replaced;
- tool-call arguments (JSON text) are scanned decoded, and the redactions land on the raw text
  the events carry, however the escapes fall between pieces;
- what the outcome record says (redaction offsets) is where the application reads the finding.

Written for the mutants `make mutation` left alive in ext_proc/streaming/gate.py (docs/testing.md).
"""

from __future__ import annotations

import base64
import json
import random

import pytest

from ext_proc.streaming.gate import (
    Blocked,
    JsonTextGate,
    Ledger,
    ScanPolicy,
    TextGate,
    inspect_json_text,
    inspect_whole,
)
from tests.unit.test_prefix_hold import CLF, KEY

EMAIL = "jane.doe@example.com"


def policy(*, prefix: bool, hold: int = 64, long_hold: int | None = None, max_block_chars: int = 60_000,
           block: frozenset[str] = frozenset()) -> ScanPolicy:
    """The inspector's policy: with the classifier's prefix analysis (prefix=True), or the
    fixed hold it falls back to, where runs of non-space characters are held up to long_hold."""
    return ScanPolicy(classifier=CLF, redact={label: "mask" for label in CLF.labels}, block=block, hash_key=KEY,
                      tenant="t", hold=hold, step=max(16, hold // 4),
                      long_hold=CLF.max_match_chars if long_hold is None else long_hold,
                      prefix=CLF.prefix_hold if prefix else None, max_block_chars=max_block_chars)


def pieces(text: str, rnd: random.Random, most: int) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rnd.randint(1, most)
        out.append(text[i:i + n])
        i += n
    return out


def stream(gate: TextGate | JsonTextGate, parts: list[str]) -> tuple[list[str], str]:
    """Each part fed and settled as the inspector does per chunk; returns what went out after each
    part (the releases the client has by then) and everything released after the flush."""
    out, after = [], []
    for p in parts:
        out.append(gate.feed(p))
        out.append(gate.settle())
        after.append("".join(out))
    out.append(gate.flush())
    return after, "".join(out)


def fake_pem(chars: int, seed: int) -> tuple[str, list[str]]:
    rnd = random.Random(seed)
    body = base64.b64encode(rnd.randbytes(chars * 3 // 4)).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----", lines


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_pem_block_longer_than_the_classifiers_match_is_never_released_in_part(prefix):
    """The classifier's own finding on a key block stops at its longest match (a few thousand
    characters); the gate holds the block from its header until the footer arrives and masks it
    whole, so no line of the key reaches the client, on any split, with settles between pieces."""
    key, lines = fake_pem(6000, seed=1)
    assert CLF.scan(key)[0].end < len(key), "the block must be longer than the classifier's own match"
    lead = ("Here is the key you asked for. Keep it out of version control, and give it to the service "
            "through its secret store rather than an environment variable. It is in the format it reads:\n")
    text = lead + key + "\nKeep it somewhere safe, and rotate it. " + "Then restart the service. " * 20
    footer_end = text.index("-----END")
    for seed in range(3):
        parts = pieces(text, random.Random(seed), 700)
        after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), parts)
        assert out == text.replace(key, "[SECRET.PRIVATE_KEY]"), (seed, out[:200])
        fed = 0
        for part, released in zip(parts, after):
            fed += len(part)
            assert not any(line in released for line in lines), seed
            assert "-----BEGIN" not in released
            # The words before the block go out while it is still arriving; the block, masked,
            # and the words after it once its footer has come (not only at the end of the answer).
            if len(lead) + 200 <= fed <= footer_end:
                assert released.startswith(lead[:len(lead) - 80]), (seed, fed, released[-80:])
            if fed >= footer_end + 300:
                assert "[SECRET.PRIVATE_KEY]\nKeep it" in released, (seed, fed, released[-80:])


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_pem_block_growing_past_the_bound_is_refused_while_it_grows(prefix):
    """A key block is held whole while it arrives, but only up to max_block_chars: past it the
    answer is stopped then (not held on to the end of the answer), and nothing of it went out."""
    key, lines = fake_pem(6000, seed=4)
    text = "The key:\n" + key + "\nThat is all."
    gate = TextGate(policy(prefix=prefix, max_block_chars=2000), Ledger(), "t")
    out, fed = "", 0
    with pytest.raises(Blocked) as exc:
        for part in pieces(text, random.Random(2), 150):
            out += gate.feed(part) + gate.settle()
            fed += len(part)
            # Tried again each time the held text grew by a quarter at most.
            assert gate.held_chars <= 2000 * 5 // 4 + 64 + 2 * 150
    assert exc.value.label == "finding_too_long"
    assert fed < 2000 * 5 // 4 + 64 + 2 * 150, fed
    assert "BEGIN" not in out and not any(line in out for line in lines)


def test_a_pem_block_at_the_end_without_its_footer_is_masked_to_the_end():
    key, lines = fake_pem(6000, seed=2)
    open_key = key[:key.index("-----END")]
    text = "Truncated answer:\n" + open_key
    _, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), pieces(text, random.Random(5), 900))
    assert out == "Truncated answer:\n[SECRET.PRIVATE_KEY]", out[:200]


def test_a_token_run_longer_than_any_finding_is_held_whole_until_it_ends():
    """A JWT far longer than the hold: held from its start while it grows, masked whole when it
    ends, and the words after it go out."""
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(3).randbytes(3000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = "Here you go, " + jwt + " (expires in an hour) and nothing more to say."
    for prefix in (True, False):
        after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), pieces(text, random.Random(9), 300))
        assert out == text.replace(jwt, "[SECRET.JWT]"), out[:120]
        assert all("eyJ" not in r and payload[:40] not in r for r in after)


@pytest.mark.parametrize("tail", [20, 21])
def test_under_a_fixed_hold_the_words_before_a_token_still_arriving_go_out_and_the_token_is_held(tail):
    """Fixed hold 8, long hold 64: the cut moves back to the start of the unbroken run crossing it,
    exactly: every word before the token goes out (with the space after it), nothing of the token
    (either parity of the run's length: the cut walks back one character at a time)."""
    p = policy(prefix=False, hold=8, long_hold=64)
    words = "one two three four five six "
    token = "AbCdEfGhIjKlMnOpQrStUvWxYz0123"[:tail]
    gate = TextGate(p, Ledger(), "t")
    assert gate.feed(words + token) == words
    assert gate.held_chars == tail


@pytest.mark.parametrize("most", [1, 4, 9, 40])
def test_a_finding_split_over_pieces_with_settles_between_is_masked_whole(most):
    text = ("Sure, mail " + EMAIL + " or call me at (415) 555-2671, card 4111 1111 1111 1111; "
            "the rest of the answer is plain words, " * 3)
    for prefix in (True, False):
        after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), pieces(text, random.Random(most), most))
        assert EMAIL not in out and "4111" not in out and "555-2671" not in out, out
        assert out.startswith("Sure, mail [PII.EMAIL] or call"), out
        for released in after:
            assert "jane" not in released and "4111 1" not in released


def test_a_blocked_label_stops_the_stream_before_any_of_the_finding_is_released():
    text = "Here you go: " + "4111 1111 1111 1111" + " and more text after it " * 4
    for prefix in (True, False):
        gate = TextGate(policy(prefix=prefix, block=frozenset({"pci.card_number"})), Ledger(), "t")
        out = ""
        with pytest.raises(Blocked) as exc:
            for part in pieces(text, random.Random(1), 3):
                out += gate.feed(part) + gate.settle()
            gate.flush()
        assert exc.value.label == "pci.card_number"
        assert not any(c.isdigit() for c in out) and "Here you go" in out or out == ""


# --- JSON text (tool-call arguments) ------------------------------------------------------------

def released_raw(gate: JsonTextGate, parts: list[str]) -> str:
    """What the client receives when the events carrying `parts` are released as the inspector
    releases them: each event's raw text up to the gate's released_chars, the gate's edits applied."""
    raw, sent, out = "", 0, []
    for part in parts:
        raw += part
        gate.feed(part)
        gate.settle()
        upto = gate.released_chars
        out.append(gate.edited(sent, upto, raw[sent:upto]))
        sent = upto
    gate.flush()
    assert gate.released_chars == len(raw), "every raw character is released once, at the end at the latest"
    out.append(gate.edited(sent, len(raw), raw[sent:]))
    return "".join(out)


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_tool_arguments_in_pieces_are_redacted_on_the_raw_text_wherever_the_escapes_fall(prefix):
    """Escapes before the address, in earlier pieces and in the same one, shift decoded offsets
    against raw ones: the mask must still land exactly on the address in the raw text, and the
    released arguments must still parse (found by `make mutation`: a wrong decoded count after
    an escape followed by plain text passed every test)."""
    raw = ('{\\"note\\": \\"say \\\\\\"hi\\\\\\"\\" and wait\\n, ' "\\tthen mail jane.doe\\u0040example.com, "
           "\\u00e9t\\u00e9 \\ud83d\\ude00 " + "please, " * 12)
    want = json.loads('"' + raw + '"').replace(EMAIL, "[PII.EMAIL]")
    for most in (1, 5, 17, 60, len(raw)):
        for seed in range(3):
            gate = JsonTextGate(policy(prefix=prefix, hold=32), Ledger(), "t")
            got = released_raw(gate, pieces(raw, random.Random(seed), most))
            assert json.loads('"' + got + '"') == want, (most, seed, got)


def test_a_redaction_record_gives_the_offsets_the_application_reads_after_lone_surrogates():
    """Two high surrogates in a row are two characters to json.loads (the second is not the low
    half of the first), and so are a high one before a character past the low range, and a low
    one first: the finding after them is recorded at the offset the application sees."""
    for lead in ("\\ud83d\\udbff ", "\\udbff\\udbff ", "\\ud800\\ud800 ", "\\ud83d\\ude00 ", "\\udc00 ",
                 "\\ud83d\\ue000 ", "\\ud83d\\ue001 ", "\\udc01\\udc02 ", "\\ue000\\udc00 "):
        raw = lead + "mail " + EMAIL + " " + "and more words " * 4
        ledger = Ledger()
        out = inspect_json_text(policy(prefix=True, hold=32), ledger, raw, "t")
        decoded = json.loads('"' + raw + '"')
        start = decoded.index(EMAIL)
        assert [(r["start"], r["end"]) for r in ledger.redactions] == [(start, start + len(EMAIL))], lead
        assert json.loads('"' + out + '"') == decoded.replace(EMAIL, "[PII.EMAIL]")


def test_a_token_longer_than_the_long_hold_with_dashes_in_a_row_is_masked_whole():
    """base64url has "-": a long JWT holds "--", and a segment may end in "-" before its ".". The
    run of token characters goes on over them, so the token is held while it grows and masked to
    its end (before: the run was taken to end at "--", and the rest of the token went out in clear)."""
    rnd = random.Random(11)
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + "".join(
        base64.urlsafe_b64encode(rnd.randbytes(600)).decode().rstrip("=") + sep for sep in ("--", "-", "---", "_-")) * 6
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload + "-.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    assert len(jwt) > CLF.max_match_chars and "--" in payload
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    for seed, most in ((1, 500), (2, 3000), (3, 9000)):
        after, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), pieces(text, random.Random(seed), most))
        assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more.", (seed, out[:60], out[-90:])
        assert all("eyJ" not in r for r in after)


def test_a_piece_ending_on_a_dot_or_dashes_inside_a_long_token_does_not_end_it():
    """A piece that ends right after a "." or "-" of a token still arriving: the token may go on
    (its next segment is in the next piece), so it stays held and is masked whole."""
    rnd = random.Random(12)
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + "".join(
        base64.urlsafe_b64encode(rnd.randbytes(2400)).decode().rstrip("=") + sep for sep in ("--", "-", "A")) * 2
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    ends = [i + 1 for i in range(len(text) - 1) if text[i] in ".-" and text[i + 1] not in ".-"][-6:]
    for k in ends:
        parts = [text[:4000], text[4000:k], text[k:]]
        after, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), parts)
        assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more.", (k, out[-90:])


def test_under_the_fixed_hold_a_token_longer_than_the_long_hold_is_masked_whole():
    """Under the fixed hold (no prefix analysis), the hold's cut fell inside a finding that starts
    the held text and is longer than long_hold; the part after the cut went out in clear. Such a
    finding is now held whole until the cut passes its end."""
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(3).randbytes(15000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    k = text.rindex(".")
    after, out = stream(TextGate(policy(prefix=False), Ledger(), "t"), [text[:5000], text[5000:k], text[k:]])
    assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more.", out[-90:]


def test_every_character_before_a_growing_key_block_goes_out_while_it_grows():
    """Up to the header: the text before a key block is not held with it, even one character
    (here the indent before the header, which arrives with it)."""
    key, lines = fake_pem(3000, seed=6)
    gate = TextGate(policy(prefix=True), Ledger(), "t")
    out = gate.feed("Here it is:\n") + gate.settle()
    assert out == "Here it is:\n"
    body = key[:key.index("-----END")]
    for i in range(0, len(body), 400):
        out += gate.feed((" " if i == 0 else "") + body[i:i + 400]) + gate.settle()
        assert out == "Here it is:\n ", out[-40:]
    out += gate.feed(key[len(body):] + "\nDone.") + gate.flush()
    assert out == "Here it is:\n [SECRET.PRIVATE_KEY]\nDone."


def test_a_long_token_growing_piece_by_piece_is_followed_in_linear_time(monkeypatch):
    """While a token longer than the long hold grows, the gate follows its run instead of
    rescanning the held text at every step: the classifier reads about each character a bounded
    number of times (bounded, linear work on untrusted input)."""
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(5).randbytes(24000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    scanned: list[int] = []
    real_scan = CLF.scan
    monkeypatch.setattr(CLF, "scan", lambda t, **kw: scanned.append(len(t)) or real_scan(t, **kw))
    after, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), [text[i:i + 200] for i in range(0, len(text), 200)])
    assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more."
    assert sum(scanned) < 6 * len(text), sum(scanned) / len(text)


def test_a_disguised_long_token_growing_piece_by_piece_is_read_in_linear_time(monkeypatch):
    """The run is followed as the classifier reads it (normalized: a zero-width character or a
    combining mark inside does not end it): while it grows, only what arrived since the last step
    is normalized again, not the whole held run."""
    from ext_proc.classify import extent
    rnd = random.Random(6)
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(rnd.randbytes(24000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    jwt = "".join(c + rnd.choice(["\u200b", "\u0301", "\u034f"]) if rnd.random() < 0.05 else c for c in jwt)
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    normalized = [0]
    real = extent.normalize
    monkeypatch.setattr(extent, "normalize", lambda t: normalized.__setitem__(0, normalized[0] + len(t)) or real(t))
    _after, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), [text[i:i + 7] for i in range(0, len(text), 7)])
    assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more."
    assert normalized[0] < 4 * len(text), normalized[0] / len(text)


def test_a_token_that_passes_the_bound_in_the_last_piece_is_refused_at_the_end():
    """The bound on a token still growing holds at the end of the answer too: a token longer
    than the classifier's match, under the bound while it grew, that the last piece takes past
    it, is refused, not released."""
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(8).randbytes(6000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=")
    text = "Here you go, " + jwt
    gate = TextGate(policy(prefix=True, max_block_chars=6000), Ledger(), "t")
    out = gate.feed(text[:5500]) + gate.settle()
    assert out == "Here you go, " and gate.held_chars < 6000
    gate.add(text[5500:])
    with pytest.raises(Blocked) as exc:
        gate.flush()
    assert exc.value.label == "finding_too_long"


def test_each_chunk_settled_releases_what_it_made_decidable_right_after_a_release():
    """A chunk that ends leaves nothing decidable waiting for the next token: after a settle that
    released something, the next chunk's settle runs however little it adds (found by `make
    mutation`: waiting for the held text to grow by a quarter after progress too passed)."""
    gate = TextGate(policy(prefix=True, hold=64), Ledger(), "t")
    out = gate.feed("Hello there, ") + gate.settle()
    assert out == "Hello there, "
    # A phone number still arriving is held; the settle releases the word before it.
    out += gate.feed("go. (415) 555-") + gate.settle()
    assert out == "Hello there, go. " and gate.held_chars == len("(415) 555-")
    # One character that cannot continue the number: what is decided goes out at this settle.
    out += gate.feed("x") + gate.settle()
    assert out.startswith("Hello there, go. (415) "), out
    out += gate.feed(" and so on.") + gate.flush()
    assert out == "Hello there, go. (415) 555-x and so on."


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("joiner", ["-", "."])
def test_a_finding_cut_on_a_dash_or_dot_inside_a_long_token_covers_the_whole_token(prefix, joiner):
    """The classifier's longest JWT match (4,096 characters) can stop on a '-' of base64url (or a
    '.'); the finding was then not extended over the rest of the token, which went out in clear
    after [SECRET.JWT] (36,000 characters of a 40,000-character JWT, found by a random stream)."""
    header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    body = list("eyJzdWIiOiJhbGljZSIsImRhdGEiOiI"
                + base64.urlsafe_b64encode(random.Random(11).randbytes(30000)).decode().rstrip("="))
    body = [c if c not in "-." else "A" for c in body]
    signature = ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    longest = [f.end for f in CLF.scan(header + "".join(body) + signature) if f.label == "secret.jwt"][0]
    body[longest - 1 - len(header)] = joiner
    jwt = header + "".join(body) + signature
    assert [f.end for f in CLF.scan(jwt) if f.label == "secret.jwt"] == [longest]   # the match stops on it
    text = "Here you go, " + jwt + " and that is all."
    for size in (300, 5000, len(text)):
        _, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), [text[i:i + size] for i in range(0, len(text), size)])
        assert out == "Here you go, [SECRET.JWT] and that is all.", (size, out[:80])


def test_the_words_after_a_long_token_go_out_once_it_has_ended_not_at_the_end_of_the_answer():
    """A token longer than the classifier's match is held from its start while it grows, and only
    while it grows: once it has ended, it goes out masked with the words after it at the next
    chunk's settle (a chunk that ends leaves nothing decidable waiting), not at the end of the
    answer, and an answer that goes on long after it is not refused as a secret too long (found by
    `make mutation`: the run followed from a wrong offset was taken as still going to the end)."""
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(6).randbytes(6000)).decode()
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    assert len(jwt) > CLF.max_match_chars // 2
    after_token = " and that is all of it. " + "Then the answer goes on in plain words. " * 60
    for lead in ("Here you go, ", "A "):   # something released before it: tried per step, per chunk
        text = lead + jwt + after_token
        ends = len(lead) + len(jwt)
        gate = TextGate(policy(prefix=True, max_block_chars=len(jwt) + 500), Ledger(), "t")
        out, fed = "", 0
        for part in [text[i:i + 200] for i in range(0, len(text), 200)]:
            out += gate.feed(part) + gate.settle()
            fed += len(part)
            assert "eyJ" not in out
            if fed >= ends + 400:
                assert out.startswith(lead + "[SECRET.JWT] and that is all of it. Then"), (lead, fed, out[-60:])
        out += gate.flush()
        assert out == lead + "[SECRET.JWT]" + after_token


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_bound_above_the_default_window_still_refuses_a_key_block_while_it_grows(prefix):
    """`max_block_chars` is the deployer's (ResponseInspector(max_block_chars=...)): set above the
    gate's 64 KiB window, a key block growing past it is still refused while it grows, not held
    (in memory, unbounded) to the end of the answer (found by `make mutation`: a window two holds
    short of the bound never saw the block pass it)."""
    bound = 70_000
    key, lines = fake_pem(bound + 6000, seed=7)
    text = "The key:\n" + key + "\nThat is all."
    gate = TextGate(policy(prefix=prefix, max_block_chars=bound), Ledger(), "t")
    out, fed = "", 0
    with pytest.raises(Blocked) as exc:
        for part in pieces(text, random.Random(3), 2000):
            out += gate.feed(part) + gate.settle()
            fed += len(part)
    assert exc.value.label == "finding_too_long"
    assert fed < bound * 5 // 4 + 64 + 2 * 2000, fed
    assert "BEGIN" not in out and not any(line in out for line in lines)


def test_a_key_block_without_its_footer_that_passes_the_bound_in_the_last_piece_is_refused_at_the_end():
    """A key block that never got its footer is masked to the end of the answer only while it is
    within the bound: one the last piece takes past `max_block_chars` is refused at the end, as a
    growing one is (found by `make mutation`: the check at the end compared with `is`)."""
    key, lines = fake_pem(8000, seed=8)
    text = "Here it is:\n" + key[:key.index("-----END")]
    gate = TextGate(policy(prefix=True, max_block_chars=6000), Ledger(), "t")
    out = gate.feed(text[:5500]) + gate.settle()
    assert out == "Here it is:\n" and gate.held_chars < 6000
    gate.add(text[5500:])
    with pytest.raises(Blocked) as exc:
        gate.flush()
    assert exc.value.label == "finding_too_long"


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_key_block_whose_header_closes_the_footer_before_it_is_held_whole_while_it_grows(prefix):
    """"-----END CERTIFICATE-----BEGIN RSA PRIVATE KEY-----": the key's header begins on the
    dashes that close the certificate's footer. Its block is still open, and is held whole as
    any other until its own footer: before, the search for an open block jumped past the
    certificate's footer and so past the key's header, and a piece longer than the classifier's
    match (4,096 characters) released the rest of the key in clear (found while sorting the
    survivors of `make mutation` at gate.py:239)."""
    cert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2Vyd\n-----END CERTIFICATE"
    key, lines = fake_pem(9000, seed=3)
    text = "Here:\n" + cert + key + "\nDone, nothing more to say here."
    want = "Here:\n" + cert + "[SECRET.PRIVATE_KEY]\nDone, nothing more to say here."
    for seed, most in ((1, 300), (2, 2500), (3, 7000), (4, len(text))):
        parts = pieces(text, random.Random(seed), most)
        after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), parts)
        assert out == want, (most, out[:200])
        for released in after:
            assert not any(line in released for line in lines), (most, released[-120:])
    gate = TextGate(policy(prefix=prefix), Ledger(), "t")
    out = gate.feed(text[:6500]) + gate.settle()
    assert not any(line in out for line in lines) and "BEGIN RSA" not in out, out[-120:]


@pytest.mark.parametrize("lead", ["Here it is\u200b:\n", "Ｈere it is:\n", "Here it is:\n-\u200b"],
                         ids=["zero-width-before", "full-width-before", "disguised-header"])
def test_a_key_block_in_text_the_classifier_normalizes_is_masked_whole(lead):
    """Headers and footers are found in the normalized text and mapped back to raw offsets: a
    character the classifier folds or drops anywhere before the block (or inside its header)
    must not move the header's raw offset, or the block is not extended past the classifier's
    own match and the rest of a long key goes out (found by `make mutation`: a header mapped to
    the end of its first character's raw span)."""
    key, lines = fake_pem(6000, seed=9)
    if lead.endswith("-\u200b"):
        key = key[1:]                       # the header's first dash is in the lead, then a zero-width space
    text = lead + key + "\nDone, that is all."
    for prefix in (True, False):
        for seed, most in ((1, 400), (2, 3000), (3, len(text))):
            after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), pieces(text, random.Random(seed), most))
            assert not any(line in out for line in lines), (prefix, most)
            assert out.endswith("[SECRET.PRIVATE_KEY]\nDone, that is all."), (prefix, most, out[-80:])


def test_two_key_blocks_longer_than_the_classifiers_match_in_one_window_are_each_masked_whole():
    """Each key block's finding is extended to its own footer, however many there are in one
    window (found by `make mutation`: the second extension compared findings, which have no order,
    and the gate raised instead of masking)."""
    first, lines1 = fake_pem(6000, seed=10)
    second, lines2 = fake_pem(5000, seed=11)
    text = "Two keys:\n" + first + "\nand\n" + second + "\nDone."
    want = "Two keys:\n[SECRET.PRIVATE_KEY]\nand\n[SECRET.PRIVATE_KEY]\nDone."
    for prefix in (True, False):
        for seed, most in ((1, 700), (2, len(text))):
            after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), pieces(text, random.Random(seed), most))
            assert out == want, (prefix, most, out[:120])
            assert not any(line in r for r in after for line in lines1 + lines2)
    # The last text whole (a JSON body's string): both blocks in the one window at the end.
    assert inspect_whole(policy(prefix=True), Ledger(), text, "t") == want


@pytest.mark.parametrize("glue", ["", "\n", " "], ids=["glued", "newline", "space"])
def test_a_key_block_right_after_another_one_counts_only_its_own_length_against_the_bound(glue):
    """A key block is measured from its own header: a complete block still held in front of an
    open one (here glued to it) is not counted in the open one's length, so two keys each under
    `max_block_chars` are both masked, not refused (found by `make mutation`: a footer found
    in an earlier step forgotten, the complete block taken as still open)."""
    first, lines1 = fake_pem(3000, seed=12)
    second, lines2 = fake_pem(4500, seed=13)
    text = "Keys:\n" + first + glue + second + "\nDone, that is all of them."
    assert len(first) + len(second) > 7000 > max(len(first), len(second)) + 200
    for prefix in (True, False):
        for seed, most in ((1, 50), (2, 400), (3, 1500)):
            after, out = stream(TextGate(policy(prefix=prefix, max_block_chars=7000), Ledger(), "t"),
                                pieces(text, random.Random(seed), most))
            # each block masked to its own footer (a footer glued to the next header is not a token
            # run going on into it: the extent of a key block is its END line, as on the request side)
            masked = "[SECRET.PRIVATE_KEY]" + glue + "[SECRET.PRIVATE_KEY]"
            assert out == "Keys:\n" + masked + "\nDone, that is all of them.", (prefix, most, out[:80])
            assert not any(line in r for r in after for line in lines1 + lines2)


@pytest.mark.parametrize("escape", ["\\{", "\\~", "\\z", "\\é"], ids=["brace", "tilde", "z", "e-acute"])
def test_a_backslash_that_starts_no_json_escape_stays_literal_and_the_text_after_it_is_scanned(escape):
    """What is not a JSON escape stays as written: a backslash before a character past "u" is
    not read as a "\\u" escape swallowing the four characters after it (a lenient parser keeps
    them; here they begin a card number), so the card is still found and masked (found by `make
    mutation`: `c < "u"` for `c != "u"`)."""
    raw = "card " + escape + "4111 1111 1111 1111 ok, and more words after it"
    ledger = Ledger()
    out = inspect_json_text(policy(prefix=True, hold=32), ledger, raw, "t")
    assert "4111 1111 1111 1111" not in out and "[PCI.CARD_NUMBER]" in out, out
    gate = JsonTextGate(policy(prefix=True, hold=32), Ledger(), "t")
    got = released_raw(gate, pieces(raw, random.Random(4), 5))
    assert "4111 1111 1111 1111" not in got, got


@pytest.mark.parametrize("pair", ["\\ud800\\udc00", "\\ud83d\\udc00", "\\udbff\\udfff", "\\udbff\\udc00"])
def test_a_surrogate_pair_at_the_ends_of_the_low_range_is_one_character_to_the_application(pair):
    """"\\ud83d\\udc00" is one character to json.loads (U+1F400): the redaction record after it gives
    the offset the application reads (found by `make mutation`: a low half of exactly 0xDC00 not
    paired, the offsets one further)."""
    raw = pair + " mail " + EMAIL + " " + "and more words " * 4
    ledger = Ledger()
    out = inspect_json_text(policy(prefix=True, hold=32), ledger, raw, "t")
    decoded = json.loads('"' + raw + '"')
    start = decoded.index(EMAIL)
    assert [(r["start"], r["end"]) for r in ledger.redactions] == [(start, start + len(EMAIL))], pair
    assert json.loads('"' + out + '"') == decoded.replace(EMAIL, "[PII.EMAIL]")


# --- the 05:23 run's survivors (docs/testing.md, "Run of 2026-11-30 05:23 UTC") ---------------

def _long_jwt(seed: int, chars: int) -> str:
    payload = "eyJzdWIiOiJhbGljZSIsImRhdGEiOiI" + base64.urlsafe_b64encode(random.Random(seed).randbytes(chars)).decode()
    return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_a_classifier_that_cannot_read_the_context_two_holds_and_a_step_is_refused_when_the_gate_is_made():
    """A window must hold the left context, the hold and a step past it: a classifier reading less
    is refused when the gate is built (fail closed at start), not left to a gate whose every window
    is shorter than its hold (found by `make mutation`: `CONTEXT_CHARS - 2 * hold` let 144 pass)."""
    from ext_proc.classify import Classifier
    from ext_proc.streaming.gate import CONTEXT_CHARS
    p = policy(prefix=True, hold=64)
    need = CONTEXT_CHARS + 2 * p.hold + p.step
    small = ScanPolicy(classifier=Classifier(max_input_chars=need - 1), redact={}, block=frozenset(), hash_key=KEY,
                       tenant="t", hold=p.hold, step=p.step)
    with pytest.raises(ValueError, match="too small for the hold-back"):
        TextGate(small, Ledger(), "t")
    TextGate(ScanPolicy(classifier=Classifier(max_input_chars=need), redact={}, block=frozenset(), hash_key=KEY,
                        tenant="t", hold=p.hold, step=p.step), Ledger(), "t")


def test_a_settle_that_released_nothing_scans_again_once_the_held_text_grew_by_a_quarter(monkeypatch):
    """settle(): what stays held after a settle that released nothing must grow by a quarter
    before the next one scans it (a long value arriving a character per chunk is not rescanned
    whole per character), and is scanned again as soon as it has (found by `make mutation`: a
    fifth, and `pending * pending // 4`, which left a held value unscanned for ~pending²/4)."""
    scanned: list[int] = []
    real_scan = CLF.scan
    monkeypatch.setattr(CLF, "scan", lambda t, **kw: scanned.append(len(t)) or real_scan(t, **kw))
    # The fixed hold: one run of non-space characters without a finding is held within the long
    # hold, scanned by each release and never released before it ends.
    gate = TextGate(policy(prefix=False), Ledger(), "t")
    gate.add("x" * 400)
    assert gate.settle() == "" and len(scanned) == 1
    gate.add("x" * 99)
    assert gate.settle() == "" and len(scanned) == 1     # 499 < 400 + 400 // 4: not yet
    gate.add("x")
    assert gate.settle() == "" and len(scanned) == 2     # 500: grown by a quarter, scanned again
    gate.add(" and the words after it.")
    out = gate.settle() + gate.flush()
    assert out == "x" * 500 + " and the words after it."


def test_a_long_token_still_growing_is_followed_from_where_the_last_step_left_it(monkeypatch):
    """While a token longer than the classifier's match grows, each step reads its run on from
    where the last one stopped, not from the token's start: the run is read about once in all
    (bounded, linear work; found by `make mutation`: `token_seen = base - stop` read the whole
    run again at every step, quadratic in the token's length, with the same output)."""
    from ext_proc.streaming import gate as gate_module
    jwt = _long_jwt(5, 24000)
    text = "Here you go, " + jwt + " and that is all of it, nothing more."
    read: list[int] = []
    real = gate_module.follow_run
    monkeypatch.setattr(gate_module, "follow_run",
                        lambda s, pos, stop, **kw: read.append(stop - pos) or real(s, pos, stop, **kw))
    after, out = stream(TextGate(policy(prefix=True), Ledger(), "t"), [text[i:i + 200] for i in range(0, len(text), 200)])
    assert out == "Here you go, [SECRET.JWT] and that is all of it, nothing more."
    assert sum(read) < 4 * len(text), sum(read) / len(text)


@pytest.mark.parametrize("most", [97, 150, 211])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_token_growing_past_the_bound_is_refused_while_it_grows(prefix, most):
    """docs/streaming.md: a token still open past max_block_chars blocks the answer with
    finding_too_long, while it grows (held text stays bounded), not at the end of the answer,
    and nothing of it went out (found by `make mutation`: the bound checked with `==`, met only
    when a step ended exactly on it)."""
    jwt = _long_jwt(11, 30000)
    text = "Here you go, " + jwt + " and that is all."
    gate = TextGate(policy(prefix=prefix, max_block_chars=6000), Ledger(), "t")
    out, fed = "", 0
    with pytest.raises(Blocked) as exc:
        for part in pieces(text, random.Random(most), most):
            out += gate.feed(part) + gate.settle()
            fed += len(part)
    assert exc.value.label == "finding_too_long"
    assert fed < 13 + 6000 + 64 + 2 * most, fed
    assert "eyJ" not in out


@pytest.mark.parametrize("lead", ["Your token is `", "Here you go->", "Here (x)", "Here you go,"])
def test_every_character_before_a_growing_token_goes_out_while_it_grows(lead):
    """docs/streaming.md: a token longer than any finding is held *from the finding's start* while
    it grows: the characters before it that cannot begin a finding go out meanwhile, also those
    the first release kept back with the token's run and a later step decides (found by `make
    mutation`: `take - hold != 0` stopped that step whenever it had something to release)."""
    jwt = _long_jwt(5, 9000)
    text = lead + jwt + " and that is all."
    gate = TextGate(policy(prefix=True), Ledger(), "t")
    after, out = stream(gate, [text[i:i + 200] for i in range(0, 8000, 200)] + [text[8000:]])
    assert after[-2] == lead, after[-2][-30:]
    assert out == lead + "[SECRET.JWT] and that is all."
