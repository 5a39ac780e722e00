"""Leak families on the response side, each with a seeded generator (random event splits, random
chunk boundaries down to one byte per chunk) across the providers' response shapes. The client's
view is read with the SDKs' own SSE decoders (openai, anthropic) and with a WHATWG reader that
drops a leading BOM and decodes invalid UTF-8 to U+FFFD as a JavaScript client (EventSource,
fetch's TextDecoder) does; strings are joined per field across events, tool arguments decoded.

Families: SSE framing (line ends, `data:` spacing, multi-line data, comments and `event:` / `id:`
/ `retry:` lines holding the secret, a BOM, a last event without its blank line); JSON as it is
decoded (numbers holding a card, invalid UTF-8 inside an event, nesting deeper than Python's json
reads, duplicate keys); content encodings (stacked, repeated headers); text bodies in a declared
charset; long secret values with characters outside a token.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib

import pytest
from anthropic._streaming import SSEDecoder as AnthropicSSE
from openai._streaming import SSEDecoder as OpenAISSE

from ext_proc.streaming import ResponseInspector
from ext_proc.wire import eventstream
from tests.unit.test_response_leaks import CLF, MASK_ALL, SECRETS, assert_not_intact, longest_part, split

CASES = 8
CARD = "4111111111111111"


def feed(surface: str, ctype: str | None, body: bytes, rnd: random.Random, *, enc: str | None = None,
         status: int = 200, one_byte: bool = False) -> tuple[bytes, ResponseInspector]:
    ins = ResponseInspector(surface, status=status, content_type=ctype, content_encoding=enc, classifier=CLF,
                            rules=MASK_ALL, hash_key=b"k" * 32, tenant="t")
    out, i = [], 0
    while i < len(body):
        n = 1 if one_byte else rnd.randint(1, 12)
        out += ins.feed(body[i:i + n], i + n >= len(body))
        i += n
    assert out and out[-1].end_of_stream
    return b"".join(r.body for r in out), ins


# --- what the clients read ------------------------------------------------------------------

def whatwg_events(body: bytes) -> list[dict]:
    """A JavaScript client's reading (EventSource / the WHATWG algorithm): a leading BOM dropped,
    invalid UTF-8 read as U+FFFD, lines ended by CRLF, LF or CR, a blank line dispatches."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    out, data, fields = [], [], {}
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if data or fields:
                out.append({"data": "\n".join(data), **fields})
            data, fields = [], {}
            continue
        if line.startswith(":"):
            out.append({"comment": line[1:]})
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return out


def sdk_events(body: bytes) -> list[dict]:
    """Every event any of the clients reads: the openai and anthropic SDK decoders and the WHATWG one."""
    out = whatwg_events(body)
    for dec in (OpenAISSE(), AnthropicSSE()):
        try:
            out += [{"data": e.data, "event": e.event, "id": e.id} for e in dec.iter_bytes(iter([body]))]
        except UnicodeDecodeError:
            pass          # the Python SDKs raise on invalid UTF-8: they read nothing further
    return out


def joined(values: list) -> list[str]:
    """Strings (and numbers, as text) joined per field name across the values, JSON escapes in
    them decoded too (tool arguments are handed to json.loads)."""
    acc: dict[str, str] = {}

    def walk(obj, name):
        if isinstance(obj, dict):
            for k, v in obj.items():
                acc["key"] = acc.get("key", "") + k
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, name)
        elif isinstance(obj, str):
            acc[name] = acc.get(name, "") + obj
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            acc[name + "#n"] = acc.get(name + "#n", "") + " " + (str(int(obj)) if float(obj).is_integer() else repr(obj))
    for v in values:
        walk(v, "")
    texts = list(acc.values())
    return texts + [re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), t) for t in texts]


def sse_view(body: bytes) -> list[str]:
    values: list = []
    lines: list[str] = []
    for ev in sdk_events(body):
        for k in ("event", "id", "retry", "comment"):
            if ev.get(k):
                lines.append(ev[k])
        data = ev.get("data")
        if data and data.strip() != "[DONE]":
            try:
                values.append(json.loads(data))
            except ValueError:
                lines.append(data)
    return joined(values) + lines + ["".join(lines)]


# --- SSE framing ----------------------------------------------------------------------------

def chat_events(pieces: list[str]) -> list[dict]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs = [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    return evs + [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]


def responses_events(pieces: list[str]) -> list[dict]:
    evs = [{"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "item_id": "i",
            "delta": p, "sequence_number": i + 1} for i, p in enumerate(pieces)]
    return evs + [{"type": "response.completed", "sequence_number": len(pieces) + 1,
                   "response": {"id": "r", "status": "completed", "output": []}}]


def anthropic_events(pieces: list[str]) -> list[dict]:
    evs = [{"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                                                 "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}},
           {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
    evs += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces]
    return evs + [{"type": "content_block_stop", "index": 0}, {"type": "message_stop"}]


def gemini_events(pieces: list[str]) -> list[dict]:
    evs = [{"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}]} for p in pieces]
    evs[-1]["candidates"][0]["finishReason"] = "STOP"
    return evs


SHAPES = {"openai.chat_completions": chat_events, "openai.responses": responses_events,
          "anthropic.messages": anthropic_events, "gemini.generate": gemini_events}


def sse_variant(events: list[dict], rnd: random.Random, *, secret: str, where: str) -> bytes:
    """The events written as a server may write SSE: per event a line end (LF, CRLF, CR), `data:`
    with or without its space, the JSON split over several data lines (between tokens), comments,
    `event:` / `id:` / `retry:` lines; a BOM first; the last event maybe without its blank line.
    `where` puts the secret in an `event:`, `id:` or comment line instead of the text."""
    out = [b"\xef\xbb\xbf"] if rnd.random() < 0.3 or where == "bom" else []
    for k, ev in enumerate(events):
        nl = rnd.choice([b"\n", b"\r\n", b"\r"])
        lines: list[bytes] = []
        if rnd.random() < 0.3:
            lines.append(b": keep-alive")
        if where in ("event", "id", "comment") and k == 1:
            lines.append({"event": b"event: ", "id": b"id: ", "comment": b": "}[where] + secret.encode())
        if rnd.random() < 0.3:
            lines.append(b"event: " + str(ev.get("type", "message")).encode())
        if rnd.random() < 0.2:
            lines.append(b"id: " + str(k).encode())
        if rnd.random() < 0.1:
            lines.append(b"retry: 1000")
        data = json.dumps(ev, separators=(", ", ": ")).encode()
        parts = data.split(b", ") if rnd.random() < 0.3 else [data]     # between tokens only
        for j, part in enumerate(parts):
            part = part + (b"," if j < len(parts) - 1 else b"")
            lines.append((b"data:" if rnd.random() < 0.5 else b"data: ") + part)
        last = k == len(events) - 1
        out.append(nl.join(lines) + nl + (b"" if last and rnd.random() < 0.5 else nl))
    return b"".join(out)


@pytest.mark.parametrize("surface", sorted(SHAPES))
@pytest.mark.parametrize("where", ["text", "bom", "event", "id", "comment"])
def test_sse_as_the_sdks_frame_it(surface, where):
    """Any SSE framing the SDK decoders accept: the secret, split over events or in a non-data
    line, never reaches a client's view (before the fix `event:` / `id:` lines and comments of
    a data event went out unscanned, and a BOM put the first event's text outside its stream)."""
    rnd = random.Random(f"{surface}/{where}")
    secret = SECRETS["card"]
    for case in range(CASES):
        text = "Sure: " + secret + " ok." if where in ("text", "bom") else "Nothing to see here, move along."
        if where == "bom":        # the first event holds the start of the secret
            pieces = [text[:10]] + split(text[10:], rnd)
        else:
            pieces = split(text, rnd)
        body = sse_variant(SHAPES[surface](pieces), rnd, secret=secret, where=where)
        out, ins = feed(surface, "text/event-stream", body, rnd, one_byte=case == 0)
        assert_not_intact(secret, sse_view(out))
        assert ins.outcome()["classification"] or ins.blocked


# --- JSON as the SDK decodes it -------------------------------------------------------------

def whole_bodies(value) -> dict[str, tuple[str, bytes]]:
    """A value the model chose (structured tool input) in each provider's whole JSON answer."""
    return {
        "anthropic.tool_use": ("anthropic.messages", json.dumps({
            "id": "m", "type": "message", "role": "assistant", "model": "c", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t", "name": "pay", "input": {"card": value, "n": 1}}]}).encode()),
        "gemini.functionCall": ("gemini.generate", json.dumps({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "pay", "args": {"card": value}}}]}, "finishReason": "STOP"}]}).encode()),
        "bedrock.toolUse": ("bedrock.converse", json.dumps({"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t", "name": "pay", "input": {"cards": [value]}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1}}).encode()),
        "openai.unlisted": ("openai.chat_completions", json.dumps({
            "id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "hi"}, "finish_reason": "stop", "extra": {"v": value}}]}).encode()),
    }


NUMBER_FORMS = {"int": lambda c: c, "float": lambda c: f"{c[0]}.{c[1:]}e{len(c) - 1}", "exp": lambda c: c + "e0",
                "dot0": lambda c: c + ".0"}


@pytest.mark.parametrize("form", sorted(NUMBER_FORMS))
@pytest.mark.parametrize("shape", sorted(whole_bodies(0)))
def test_a_number_holding_a_card_is_masked(shape, form):
    """A model writes a card number as a JSON number in structured tool input; the SDK hands it to
    the application as an int or float (4.111111111111111e15 prints as 4111111111111111.0). Before
    the fix numbers were never scanned."""
    rnd = random.Random(f"{shape}/{form}")
    surface, template = whole_bodies(0)[shape]
    literal = NUMBER_FORMS[form](CARD).encode()
    body = template.replace(b'": 0', b'": ' + literal).replace(b"[0]", b"[" + literal + b"]")
    assert literal in body
    for case in range(3):
        out, ins = feed(surface, "application/json", body, rnd, one_byte=case == 0)
        assert literal not in out and CARD.encode() not in out
        assert longest_part(CARD, joined([json.loads(out)])) < 6
        assert "pci.card_number" in ins.outcome()["classification"]


def test_a_number_in_a_streamed_event_is_masked_and_logprobs_are_not_scanned():
    ev = {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "pay", "args": {
        "card": int(CARD)}}}]}, "avgLogprobs": -0.4141414141414141, "finishReason": "STOP"}]}
    body = b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"
    out, ins = feed("gemini.generate", "text/event-stream", body, random.Random(1))
    assert CARD.encode() not in out and b"[PCI.CARD_NUMBER]" in out
    assert b"-0.4141414141414141" in out      # a computed probability, not a value the model chose


def escape_digits(obj):
    """Digits in strings marked to be written as \\u escapes (U+E030.. stand for them)."""
    if isinstance(obj, dict):
        return {k: escape_digits(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [escape_digits(v) for v in obj]
    if isinstance(obj, str):
        return "".join(chr(0xE000 + ord(c)) if c.isdigit() and c.isascii() else c for c in obj)
    return obj


@pytest.mark.parametrize("surface", sorted(SHAPES))
def test_invalid_utf8_in_an_event_is_read_as_a_javascript_client_reads_it(surface):
    """One invalid byte made the event unparseable to Python's json, so it was scanned as raw text:
    not joined to its stream, and its \\u escapes not decoded. TextDecoder reads U+FFFD and
    JSON.parse the rest: the secret, escaped and split over events, reached a JS client."""
    rnd = random.Random(surface)
    secret = SECRETS["card"]
    for case in range(CASES):
        pieces = split("Sure: " + secret + " ok.", rnd)
        evs = SHAPES[surface](pieces)
        lines = []
        for ev in evs:
            raw = json.dumps(escape_digits(ev) if rnd.random() < 0.5 else ev, ensure_ascii=True).encode()
            raw = raw.replace(b"\\ue03", b"\\u003")     # the digits of strings written as \u0034
            if rnd.random() < 0.5:
                raw = raw.replace(b'"m"', b'"m\xff"', 1).replace(b'"i"', b'"i\xfe"', 1)
            lines.append(b"data: " + raw + b"\n\n")
        out, ins = feed(surface, "text/event-stream", b"".join(lines), rnd, one_byte=case == 0)
        assert_not_intact(secret, sse_view(out))


def test_an_event_nested_deeper_than_pythons_json_reads_is_blocked():
    deep = b"[" * 2000 + b"]" * 2000
    ev = b'{"choices":[{"index":0,"delta":{"content":"4111 1111 "}}],"x":' + deep + b"}"
    nxt = json.dumps(chat_events(["1111 1111 ok"])[0]).encode()
    body = b"data: " + ev + b"\n\ndata: " + nxt + b"\n\n"
    out, ins = feed("openai.chat_completions", "text/event-stream", body, random.Random(2))
    assert ins.blocked and ins.blocked["label"] == "bad_body"
    assert b"4111 1111" not in out


@pytest.mark.parametrize("surface", ["openai.chat_completions", "anthropic.messages"])
def test_duplicate_keys_keep_the_last_as_the_sdks_do(surface):
    rnd = random.Random(3)
    for case in range(CASES):
        pieces = split("Sure: " + SECRETS["card"] + " ok.", rnd)
        raws = []
        for ev in SHAPES[surface](pieces):
            raw = json.dumps(ev).encode()
            # the first duplicate a decoy, the one the SDK keeps the text
            raw = raw.replace(b'"content": ', b'"content": "x", "content": ', 1).replace(
                b'"text": ', b'"text": "x", "text": ', 1)
            raws.append(b"data: " + raw + b"\n\n")
        out, _ins = feed(surface, "text/event-stream", b"".join(raws), rnd, one_byte=case == 0)
        assert_not_intact(SECRETS["card"], sse_view(out))


def test_a_bedrock_event_with_duplicate_keys_is_joined_to_its_stream():
    """A duplicate key made the event-stream payload unparseable to the strict loader, so its text
    was scanned alone, outside its stream."""
    rnd = random.Random(4)
    secret = SECRETS["card"]

    def msg(name, payload: bytes):
        return eventstream.encode_message({":event-type": name, ":content-type": "application/json",
                                           ":message-type": "event"}, payload)
    for case in range(CASES):
        pieces = split("Sure: " + secret + " ok.", rnd)
        body = msg("messageStart", b'{"role":"assistant"}')
        for p in pieces:
            body += msg("contentBlockDelta", b'{"contentBlockIndex":0,"contentBlockIndex":0,"delta":{"text":'
                        + json.dumps(p).encode() + b"}}")
        body += msg("contentBlockStop", b'{"contentBlockIndex":0}') + msg("messageStop", b'{"stopReason":"end_turn"}')
        out, _ins = feed("bedrock.converse", "application/vnd.amazon.eventstream", body, rnd, one_byte=case == 0)
        dec = eventstream.EventStreamDecoder(1 << 24)
        texts = "".join(json.loads(m.payload).get("delta", {}).get("text", "") for m, _raw in dec.feed(out))
        assert longest_part(secret, [texts]) < 6


# --- content encodings ----------------------------------------------------------------------

def _compress(coding: str, data: bytes, rnd: random.Random) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if rnd.random() < 0.5:       # deflate: zlib-wrapped, or raw as some servers send it
        return zlib.compress(data)
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("header", ["gzip, gzip", "deflate, gzip", "identity, gzip", "gzip,identity",
                                    " GZIP , Deflate ", "x-gzip"])
def test_stacked_and_listed_codings_are_decoded_and_inspected(header):
    """A content-encoding list is undone last first, as httpx does. Before the fix anything but
    one bare coding was refused; now it is decoded and inspected (more than four stages, or a
    coding that cannot be decoded, is still refused)."""
    rnd = random.Random(header)
    for case in range(4):
        body = json.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "card " + SECRETS["card"]}}]}).encode()
        for c in [m.strip().lower() for m in header.split(",")]:
            body = _compress("gzip" if c == "x-gzip" else c, body, rnd) if c != "identity" else body
        out, ins = feed("openai.chat_completions", "application/json", body, rnd, enc=header, one_byte=case == 0)
        assert not ins.blocked and SECRETS["card"].encode() not in out and b"[PCI.CARD_NUMBER]" in out
        assert ins.release_headers_mutation["remove"] == ["content-encoding", "content-length"]


@pytest.mark.parametrize("header", ["br", "zstd", "gzip, br", "compress", "x-secret-4111111111111111",
                                    "gzip, gzip, gzip, gzip, gzip"])
def test_codings_that_cannot_be_decoded_are_refused_without_echoing_the_header(header):
    out, ins = feed("openai.chat_completions", "application/json", b"\x1f\x8b\x08\x00garbage", random.Random(1),
                    enc=header)
    assert ins.blocked["label"] == "unsupported_encoding"
    assert b"4111" not in out and "4111" not in ins.blocked["reason"]


@pytest.mark.asyncio
async def test_repeated_content_encoding_headers_are_all_undone(runtime, token):
    """Envoy hands repeated headers over one by one; the server read only the first, so
    `content-encoding: identity` then `content-encoding: gzip` passed a gzip body uninspected,
    which the client (httpx joins them) decompressed and read."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from ext_proc.server.servicer import Servicer
    from tests.unit.test_tracing import _drive, _exchange

    answer = json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "card " + SECRETS["card"]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    headers = pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in [
            (":status", "200"), ("content-type", "application/json"), ("content-encoding", "identity"),
            ("content-encoding", "gzip")]]))
    messages = _exchange(token, "req-two-encodings", {})[:2] + [
        pb.ProcessingRequest(response_headers=headers),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=gzip.compress(answer), end_of_stream=True))]
    replies, ctx = await _drive(Servicer(runtime), messages)
    body = b"".join(r.response_body.response.body_mutation.streamed_response.body for r in replies
                    if r.WhichOneof("response") == "response_body")
    assert ctx.aborted is None
    assert SECRETS["card"].encode() not in body and b"[PCI.CARD_NUMBER]" in body
    removed = [h for r in replies if r.WhichOneof("response") == "response_headers"
               for h in r.response_headers.response.header_mutation.remove_headers]
    assert "content-encoding" in removed


# --- bodies that are not what they say ------------------------------------------------------

HOSTILE_SEQ = [b"x, y", b"[\x0c1]", b"1]", b'{"a": 1}\x0b{"b": 2}', b"error, your prompt was 4111 1111 1111 1111"]


def test_the_json_sequence_reader_ends_on_a_value_that_begins_with_a_delimiter():
    """A "," or "]" where a bare value begins, or a \\f / \\v between values, was emitted as an
    empty value and read again as the next one: a loop without end taking memory (21 GB in a
    minute on this box) for an upstream error body like "error, ..." labelled JSON, or a Gemini
    array with a form feed. Run in a child process with a memory and time bound."""
    import subprocess
    import sys
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from ext_proc.wire.jsonseq import JsonSeqReader, JsonSeqError\n"
            f"for body in {HOSTILE_SEQ!r}:\n"
            "    r = JsonSeqReader(1 << 20)\n"
            "    try:\n"
            "        r.feed(body); r.finish()\n"
            "    except JsonSeqError:\n"
            "        pass\n"
            "print('done')\n")
    from tests.support import REPO
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60,
                          env={"PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == b"done", done.stderr[-500:]


@pytest.mark.parametrize("ctype", ["application/json", None, "application/x-ndjson"])
@pytest.mark.parametrize("status", [200, 400, 500])
def test_an_error_body_that_is_not_json_is_scanned_whole(ctype, status):
    """A body labelled JSON (or not labelled) that does not parse was read as values one after
    another, word by word: "Bad request: 4111 1111 1111 1111" gave four numbers, none a card,
    while the client shows the text. Values are only read as values when each is JSON, and the
    whole body is scanned as the text it also is."""
    rnd = random.Random(f"{ctype}/{status}")
    card = SECRETS["card"].encode()
    for body in HOSTILE_SEQ[-1:] + [b"[\x0c" + card + b"]", b"Bad request: " + card + b" rejected", card,
                                    b"[" + card + b"]", b'{"a": 1}\n' + card + b'\n{"b": 2}']:
        out, ins = feed("openai.chat_completions", ctype, body, rnd)
        assert SECRETS["card"].encode() not in out


CHARSETS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp500", "utf-7", "shift_jis", "latin-1", "koi8-r"]


@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("ctype", ["text/plain", "text/html", "application/json", "application/octet-stream"])
def test_a_text_body_is_read_in_its_declared_charset(charset, ctype):
    """An upstream error page echoing the prompt, in the charset its content type declares:
    httpx decodes `.text` with it (the SDKs build their error messages from it). It was read as
    UTF-8: in UTF-16 or EBCDIC no character of the secret was seen."""
    rnd = random.Random(f"{charset}/{ctype}")
    for case in range(3):
        secret = SECRETS["card"] if charset != "shift_jis" or case else "\uff14\uff11\uff11\uff11 1111 1111 1111"
        text = rnd.choice(["Error: your prompt ", "<p>Bad request: ", "invalid value "]) + secret + " rejected."
        body = text.encode(charset)
        out, ins = feed("openai.chat_completions", f"{ctype}; charset={charset}", body, rnd,
                        status=rnd.choice([400, 422, 500]), one_byte=case == 0)
        seen = out.decode(charset, "replace")
        assert not ins.blocked and secret not in seen and "[PCI.CARD_NUMBER]" in seen
        assert longest_part(secret, [seen]) < 6


# --- long values ----------------------------------------------------------------------------

def generic_value(rnd: random.Random, chars: int) -> str:
    """A password past secret.generic's 200-character bound, with the characters its value class
    admits and a token does not ("%2F", ":", "!", "@", "#", "$", "&", "*")."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    out = []
    while sum(map(len, out)) < chars:
        out.append("".join(rnd.choice(alphabet) for _ in range(rnd.randint(5, 20))))
        out.append(rnd.choice(["%2F", ":", "!", "@", "#", "$", "&", "*", "|", "^"]))
    return "".join(out)[:chars]


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
def test_a_generic_secret_longer_than_its_rule_is_masked_whole_by_the_gate(prefix):
    """The gate extended a finding over the rest of its token; a generic value runs on with
    characters a token does not have, and everything after the first of them past the rule's
    200 characters went out in clear (708 of 925 characters)."""
    from ext_proc.streaming.gate import Ledger, TextGate
    from tests.unit.test_gate_promises import pieces, policy, stream
    rnd = random.Random(f"generic/{prefix}")
    for case in range(6):
        value = generic_value(rnd, rnd.randint(300, 3000))
        text = "Use it like this: client_secret=" + value + " and keep it safe."
        parts = pieces(text, rnd, 1 if case == 0 else rnd.choice([7, 40, 400]))
        _after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), parts)
        assert longest_part(value, [out]) < 6, (case, out[:300])
        assert "[SECRET.GENERIC]" in out


@pytest.mark.parametrize("framing", ["chat.content", "chat.arguments", "anthropic.text", "anthropic.partial_json",
                                     "gemini.sse", "gemini.array", "converse.text", "responses.output_text",
                                     "whole.content"])
def test_a_generic_secret_longer_than_its_rule_never_reaches_the_sdk(framing):
    from tests.unit.test_response_leaks import build, released, sdk_view
    rnd = random.Random(f"generic/{framing}")
    for _ in range(3):
        value = generic_value(rnd, rnd.randint(300, 1500))
        surface, ctype, body = build(framing, "api_key=" + value, rnd)
        out, ins = released(surface, ctype, body, rnd)
        assert longest_part(value, sdk_view(out)) < 6
        assert "secret.generic" in ins.outcome()["classification"]


@pytest.mark.parametrize("ctype", ["text/event-stream", "text/plain", None])
def test_plain_text_sse_data_is_one_stream_across_events(ctype):
    """Data that is not a JSON object (plain text, or a number: "1111") is what an EventSource
    page shows, event after event. It was scanned event by event: a card split over events went
    out. Now it is one content stream, held and decided like deltas."""
    rnd = random.Random(str(ctype))
    secret = SECRETS["card"]
    for case in range(CASES):
        text = rnd.choice(["Sure: ", "Your card is ", ""]) + secret + rnd.choice([" ok.", "", " and more text here."])
        body = b"".join(rnd.choice([b"data: ", b"data:"]) + p.encode() + rnd.choice([b"\n\n", b"\r\n\r\n", b"\r\r"])
                        for p in split(text, rnd, 6))
        out, ins = feed("openai.chat_completions", ctype, body, rnd, one_byte=case == 0)
        shown = "".join(e.get("data", "") for e in whatwg_events(out))
        assert longest_part(secret, [shown]) < 6, shown
        assert "[PCI.CARD_NUMBER]" in shown
    clean = b"data: hello\n\ndata: 42\n\ndata: world\n\n"
    out, _ins = feed("openai.chat_completions", ctype, clean, rnd)
    assert out == clean


# --- long values written in look-alikes -----------------------------------------------------

def _disguised(value: str, family: str, rnd: random.Random, rate: float = 0.05) -> str:
    """VALUE in characters the classifier folds back to it: the request side's look-alike forms
    (`mixed`: full-width, dash and dot look-alikes, confusable letters, invisible characters
    after them) or one family alone; combining marks after characters too."""
    from ext_proc.classify.normalize import fold_plain
    from tests.unit.test_request_leaks import _disguise, _look_alikes
    if family == "mixed":
        return _disguise(value, rnd, rate)
    out = []
    for c in value:
        if rnd.random() >= rate:
            out.append(c)
        elif family == "invisible":
            out.append(c + rnd.choice(["\u200b", "\u2060", "\u00ad", "\ufeff", "\u034f", "\u200d\u200d"]))
        elif family == "combining":
            out.append(c + rnd.choice(["\u0301", "\u0332", "\u20e3", "\u0300\u0323"]))
        elif family == "fullwidth" and "!" <= c <= "~":
            out.append(chr(ord(c) + 0xFEE0))
        elif family == "confusable":
            forms = [f for f in _look_alikes(c)[1:] if len(f) == 1 and not ("\uff01" <= f <= "\uff5e")]
            out.append(rnd.choice(forms) if forms else c)
        else:
            out.append(c)
    written = "".join(out)
    assert fold_plain(written) == value
    return written


def _long_secret(kind: str, rnd: random.Random) -> tuple[str, str, str]:
    """(what the model writes before the disguise, the value's core to look for, the disguised text)"""
    from tests.unit.test_request_leaks import _long_jwt, _long_key, _long_token
    seed = rnd.randrange(1 << 30)
    if kind == "jwt":
        value = _long_jwt(rnd.randint(3200, 6000), seed)
        return value, value.split(".")[1], ""
    if kind in ("id_token", "password"):
        core = _long_token(rnd.randint(400, 2500), seed)
        return f"{kind}={core}", core, ""
    value = _long_key(rnd.randint(60, 120), seed)
    return value, "".join(value.split("\n")[1:-1]), ""


LOOK_ALIKE_FAMILIES = ["mixed", "invisible", "combining", "fullwidth", "confusable"]


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
@pytest.mark.parametrize("kind", ["jwt", "id_token", "password", "key", "key-header"])
def test_a_long_secret_written_in_look_alikes_is_masked_whole_by_the_gate(kind, prefix):
    """A secret longer than its rule's longest match (a JWT over 4,096 characters, a long
    `id_token=` / `password=` value, a key block) written with zero-width characters, combining
    marks, full-width or look-alike characters inside: the classifier reads it through them, but
    the gate followed the value in the raw text, so it was masked to the rule's bound and the rest
    (157 of a JWT payload's 16-character pieces) reached the client. Streamed in random pieces,
    one character at a time in the first case; what the client reads is folded as the classifier
    folds it before looking for the value."""
    from ext_proc.classify.normalize import fold_plain
    from ext_proc.streaming.gate import Ledger, TextGate
    from tests.unit.test_gate_promises import pieces, policy, stream
    from tests.unit.test_request_leaks import _pieces_left
    rnd = random.Random(f"look-alike/{kind}/{prefix}")
    bad = []
    for case, family in enumerate(LOOK_ALIKE_FAMILIES * 2):
        value, core, _ = _long_secret(kind.removesuffix("-header"), rnd)
        if kind == "key-header":     # the BEGIN and END lines disguised, the body too
            lines = value.split("\n")
            written = "\n".join([_disguised(lines[0], family, rnd, 0.5), *(_disguised(x, family, rnd) for x in
                                 lines[1:-1]), _disguised(lines[-1], family, rnd, 0.5)])
        else:
            written = _disguised(value, family, rnd)
        text = rnd.choice(["Here it is: ", "Why does this fail?\n", ""]) + written + rnd.choice(["\nThanks.", " ok", ""])
        parts = pieces(text, rnd, 1 if case == 0 else rnd.choice([3, 40, 700]))
        _after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), parts)
        left = _pieces_left(core, fold_plain(out).replace("\n", "").replace(" ", ""))
        if left:
            bad.append((case, family, len(core), len(left)))
    assert not bad


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-be", "utf-32-le"])
@pytest.mark.parametrize("ctype", ["text/plain", None])
def test_a_utf16_body_without_a_charset_is_read_as_the_sdk_reads_it(charset, ctype):
    """An error page in UTF-16 whose content type names no charset: httpx's `.text` decodes it
    as UTF-8, so the client reads the characters with NULs between them (and U+FFFD for a BOM);
    a person reading the message reads the value. The classifier drops the NULs; the gate
    followed a long secret's run in the raw text, where each NUL ended it, so a JWT over 4,096
    characters was masked to the rule's bound and 164 of its payload's 418 sixteen-character
    pieces reached the client. Short secrets and long ones, random chunks (one byte first)."""
    from tests.unit.test_request_leaks import _long_jwt, _long_token, _pieces_left
    rnd = random.Random(f"nul/{charset}/{ctype}")
    for case in range(3):
        kind = ["card", "jwt", "id_token"][case]
        if kind == "card":
            value = core = SECRETS["card"]
        elif kind == "jwt":
            value = _long_jwt(rnd.randint(3300, 4000), case)
            core = value.split(".")[1]
        else:
            core = _long_token(rnd.randint(300, 2000), case)
            value = "id_token=" + core
        text = rnd.choice(["Error: your prompt ", "Bad request: "]) + value + " rejected."
        out, ins = feed("openai.chat_completions", ctype, text.encode(charset), rnd, status=rnd.choice([200, 400]),
                        one_byte=case == 0)
        seen = out.decode("utf-8", "replace").replace("\x00", "")     # httpx's .text, NULs not shown
        assert not ins.blocked and not _pieces_left(core, seen, 6 if kind == "card" else 16), (kind, seen[:200])


def _unescape(text: str) -> str:
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


@pytest.mark.parametrize("mode", ["per-event-json", "split-escapes"])
def test_non_object_json_data_with_escapes_is_one_decoded_stream(mode):
    """SSE data that is a JSON string, digits written as \\u escapes: each event a whole JSON
    string (a client parses each and joins them), or one JSON string cut anywhere, an escape
    split between two events (a client joins the data and parses it). A card split over the
    events reached both readings (19 of 19 characters)."""
    secret = SECRETS["card"]

    def esc(s: str, rnd: random.Random) -> str:
        return "".join(f"\\u{ord(c):04x}" if c.isdigit() and rnd.random() < 0.5 else c for c in s)
    worst = 0
    for case in range(CASES):
        rnd = random.Random(f"{mode}/{case}")
        text = "Sure: " + secret + " ok."
        if mode == "per-event-json":
            datas = ['"' + esc(p, rnd) + '"' for p in split(text, rnd, 6)]
        else:
            datas = split('"' + esc(text, rnd) + '"', rnd, 6)
        body = b"".join(b"data: " + d.encode() + b"\n\n" for d in datas)
        out, _ins = feed("openai.chat_completions", "text/event-stream", body, rnd, one_byte=case == 0)
        evs = [e["data"] for e in whatwg_events(out) if "data" in e]
        views = ["".join(evs)]
        parsed = []
        for d in evs:
            try:
                v = json.loads(d)
            except ValueError:
                v = d
            parsed.append(v if isinstance(v, str) else json.dumps(v))
        views.append("".join(parsed))
        worst = max(worst, longest_part(secret, views + [_unescape(v) for v in views]))
    assert worst < 6


@pytest.mark.parametrize("ctype", ["application/json", "text/event-stream"])
def test_a_number_a_classifier_reads_only_as_a_hint_stays_a_number(ctype):
    """Every tenth `created` timestamp (1764480004) is a Luhn-valid NPI, a reading at confidence 40
    that only provider words would confirm; scanning numbers made the default policy turn it into
    the string "[PHI.US_NPI]", which a typed SDK cannot parse as `created` (pydantic warned in
    the e2e suite). A number has no context: only confident readings (a card) rewrite it."""
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764480004, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    if ctype == "text/event-stream":
        body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
    else:
        body = json.dumps({**chunk, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}).encode()
    assert CLF.scan("1764480004")                       # the hint is there
    out, _ins = feed("openai.chat_completions", ctype, body, random.Random(2))
    assert b'"created": 1764480004' in out or b'"created":1764480004' in out, out[:200]


# --- non-object data as one decoded stream: the family ---------------------------------------

DATA_SECRETS = {
    "card": "4111 1111 1111 1111",
    "email": "jane.doe@example.com",
    "openai_key": "sk-proj-Q7xKp2Lm9Rt4Vw8Yz3Bc6Df1Gh5Jk0Nq2Ps7Tu4Xv9Za3Ce8Fi6Hl1Mo5",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUgRG9lIn0."
           "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
}
_SIMPLE = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "/": "\\/"}


def _json_escape_randomly(text: str, rnd: random.Random, p: float) -> str:
    """`text` as the inside of a JSON string, characters written as escapes at random: \\uXXXX
    (either hex case), a surrogate pair for characters outside the BMP, the short escapes; quotes
    and backslashes always escaped."""
    out = []
    for c in text:
        if c in '"\\' or (c in _SIMPLE and rnd.random() < p):
            out.append(_SIMPLE[c])
        elif ord(c) < 0x20 or rnd.random() < p:
            if ord(c) > 0xFFFF:
                v = ord(c) - 0x10000
                h = f"\\u{0xD800 + (v >> 10):04x}\\u{0xDC00 + (v & 0x3FF):04x}"
            else:
                h = f"\\u{ord(c):04x}"
            out.append(h.upper().replace("\\U", "\\u") if rnd.random() < 0.3 else h)
        else:
            out.append(c)
    return "".join(out)


def _decode_all(text: str) -> str:
    """Every JSON escape in `text` decoded wherever it stands (a client unescaping what it shows),
    surrogate pairs joined."""
    simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    s = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5
               else simple.get(m.group(1), m.group(0)), text)
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _js_string(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e21 else repr(v)
    return json.dumps(v)


def _data_views(datas: list[str]) -> list[str]:
    """What clients read of the data events: joined as they are; each parsed (a string as its
    text, a number as JavaScript prints it, what does not parse as it is) and joined; all joined
    and then parsed; each of these with every escape decoded too."""
    views = ["".join(datas)]
    per_event = []
    for d in datas:
        try:
            per_event.append(_js_string(json.loads(d)))
        except ValueError:
            per_event.append(d)
    views.append("".join(per_event))
    try:
        views.append(_js_string(json.loads("".join(datas))))
    except ValueError:
        pass
    return views + [_decode_all(v) for v in views]


def _escape_cuts(raw: str, rnd: random.Random) -> list[int]:
    """Cut points in `raw` at escapes: just before one, inside one (after "\\", "\\u", "\\u00",
    between the halves of a surrogate pair) and just after one."""
    cuts = []
    for m in re.finditer(r"\\(?:u[0-9a-fA-F]{4}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|.)", raw):
        if rnd.random() < 0.4:
            a, b = m.span()
            cuts.append(rnd.choice([a, b, a + 1, min(a + 2, b), min(a + 4, b), min(a + 6, b)]))
    return cuts


def _data_case(kind: str, mode: str, rnd: random.Random) -> list[str]:
    secret = DATA_SECRETS[kind]
    text = rnd.choice(["Sure: ", 'He said "', "\U0001F600 here: ", ""]) + secret + \
        rnd.choice([" ok.", '" \U0001F600', "\nThanks.", ""])
    p = rnd.choice([0.2, 0.5, 1.0])
    if mode == "split":
        # One JSON string cut anywhere: at random and at escapes (a client joins the data, parses).
        raw = '"' + _json_escape_randomly(text, rnd, p) + '"'
        cuts = sorted({0, len(raw), *(rnd.randrange(1, len(raw)) for _ in range(len(raw) // 5)),
                       *_escape_cuts(raw, rnd)})
        return [raw[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    datas = []
    for piece in split(text, rnd, 7):
        form = rnd.random() if mode == "mixed" else 0.0
        if form > 0.5 and piece.isdigit() and piece[0] != "0":
            # A bare JSON number; a float that JavaScript prints as the digits.
            datas.append(rnd.choice([piece, f"{piece}.0", f"{piece}e0", f"{piece[0]}.{piece[1:] or '0'}e{len(piece) - 1}"]))
        elif form > 0.3 and piece.strip() == piece and piece and '"' not in piece:
            datas.append(_json_escape_randomly(piece, rnd, p))   # not JSON: read as it is
        elif form > 0.25:
            datas.append('["' + _json_escape_randomly(piece, rnd, p) + '"]')   # an array holding it
        else:
            datas.append('"' + _json_escape_randomly(piece, rnd, p) + '"')   # each a JSON string
    return datas


@pytest.mark.parametrize("mode", ["per-event", "split", "mixed"])
@pytest.mark.parametrize("kind", sorted(DATA_SECRETS))
def test_non_object_data_is_read_decoded_across_events(kind, mode):
    """The family of the test above, generated: a card, an email (`\\u0040` for @), an OpenAI key
    and a JWT, characters written as escapes at random (surrogate pairs for an emoji next to the
    secret, short escapes, upper-case hex), the data events each a whole JSON string, one JSON
    string cut at random and at escapes (before one, inside one, between the halves of a surrogate
    pair, right after one), or a mix of JSON strings, bare numbers (also `4111.0`, `1111e0`, which a
    JavaScript client prints as digits) and data that is not JSON. In every client reading (data
    joined as it is, each parsed and joined, all joined and parsed; escapes decoded), no six
    characters of the secret arrive together; what was a JSON string is one still."""
    secret = DATA_SECRETS[kind]
    for case in range(CASES):
        rnd = random.Random(f"data/{kind}/{mode}/{case}")
        datas = _data_case(kind, mode, rnd)
        body = b"".join(b"data: " + d.encode("utf-8", "surrogatepass") + b"\n\n" for d in datas)
        if rnd.random() < 0.5:
            body += b"data: [DONE]\n\n"
        out, ins = feed("openai.chat_completions", "text/event-stream", body, rnd, one_byte=case == 0)
        assert not ins.blocked, ins.blocked
        evs = [e["data"] for e in whatwg_events(out) if "data" in e and e["data"] != "[DONE]"]
        assert longest_part(secret, _data_views(evs)) < 6, (kind, mode, case, datas, evs)
        if mode == "per-event":
            for d in evs:
                assert isinstance(json.loads(d), str), d


@pytest.mark.parametrize("line", [": ", "foo: ", "event: "])
def test_a_line_that_is_not_data_is_read_decoded_too(line):
    """A comment, a field no client knows, an `event:` line without data: no SDK hands these on
    as data, but an application that logs them unescaped reads `\\u0031` as a digit; they were
    scanned as raw text only."""
    rnd = random.Random(line)
    for case in range(CASES):
        secret = DATA_SECRETS[rnd.choice(sorted(DATA_SECRETS))]
        text = line + _json_escape_randomly("Sure: " + secret, rnd, 0.5)
        body = text.encode() + b"\n\n" + b'data: {"choices": []}\n\n'
        out, ins = feed("openai.chat_completions", "text/event-stream", body, rnd, one_byte=case == 0)
        seen = out.decode()
        assert longest_part(secret, [seen, _decode_all(seen)]) < 6, seen


@pytest.mark.parametrize("ctype", ["text/plain", None, "application/octet-stream", "application/x-ndjson",
                                   "application/json"])
@pytest.mark.parametrize("kind", sorted(DATA_SECRETS))
def test_a_json_string_body_of_no_known_framing_is_read_decoded(kind, ctype):
    """A body that is neither SSE, an event stream nor a JSON object or array (it starts with a
    quote), served as text: the openai and anthropic SDKs hand an error body's text to json.loads
    whatever its content type (`_make_status_error_from_response`), so `"Bad request:
    4\\u0031\\u0031\\u0031 ..."` is a card in the APIError they raise; it was scanned as raw text,
    escapes and all. Escapes at random (surrogate pairs, escapes cut between chunks, one byte per
    chunk first). As ndjson: JSON strings one per line, the secret cut between them; as a JSON
    array of strings sent in pieces, read element by element (an application joins them)."""
    secret = DATA_SECRETS[kind]
    for case in range(CASES):
        rnd = random.Random(f"body/{kind}/{ctype}/{case}")
        text = rnd.choice(["Bad request: ", "\U0001F600 rejected: ", ""]) + secret + rnd.choice([" (400)", ""])
        p = rnd.choice([0.2, 0.5, 1.0])
        if ctype == "application/x-ndjson":
            body = "".join('"' + _json_escape_randomly(t, rnd, p) + '"\n' for t in split(text, rnd, 8)).encode()
        elif ctype == "application/json":     # an array of strings sent in pieces (read element by element)
            body = ("[" + ", ".join('"' + _json_escape_randomly(t, rnd, p) + '"' for t in split(text, rnd, 8))
                    + "]").encode()
        else:
            body = ('"' + _json_escape_randomly(text, rnd, p) + '"').encode()
        out, ins = feed("openai.chat_completions", ctype, body, rnd, status=rnd.choice([200, 400]),
                        one_byte=case == 0)
        seen = out.decode("utf-8", "replace")
        views = [seen, _decode_all(seen)]
        for value in [seen.strip()] + seen.splitlines():
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            views.append("".join(map(_js_string, parsed)) if isinstance(parsed, list) else _js_string(parsed))
        views.append("".join(views[2:]))
        assert not ins.blocked and longest_part(secret, views) < 6, (kind, seen)


def test_the_data_stream_reads_each_character_a_bounded_number_of_times(monkeypatch):
    """One JSON string of 6,000 escapes cut into one-character events (every escape split over
    six events), a card at its end: the data is lexed (gate.data_segments) a bounded number of
    times per character, not again from the start of a pending escape or stream at each event."""
    from ext_proc.streaming import gate as gate_mod
    lexed = [0]
    real = gate_mod.data_segments

    def counting(raw, *args):
        lexed[0] += len(raw)
        return real(raw, *args)
    monkeypatch.setattr(gate_mod, "data_segments", counting)
    raw = '"' + "\\u0041" * 1000 + " card " + "".join(f"\\u{ord(c):04x}" for c in CARD) + '"'
    body = b"".join(b"data: " + c.encode() + b"\n\n" for c in raw)
    out, ins = feed("openai.chat_completions", "text/event-stream", body, random.Random(0))
    evs = [e["data"] for e in whatwg_events(out) if "data" in e]
    assert CARD not in _decode_all("".join(evs)) and "[PCI.CARD_NUMBER]" in "".join(evs)
    assert lexed[0] <= 16 * len(raw), lexed[0]
