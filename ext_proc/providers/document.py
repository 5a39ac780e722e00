"""A request body as everything that will read it sees it: the generic walk.

The provider's extractor (adapters.py) says how its model reads a conversation: which strings, in
which order, make up the text the model reads together (the reading view). Everything else is
found here without a list of known fields: every string value and every object key of the JSON
document, numbers that could carry digits, text attachments decoded the way the provider decodes
them, and binary attachments or remote references the provider will fetch, which cannot be
inspected and become labels (``content.unscanned.*``) for policy instead of being skipped.

Sans-I/O and bounded: the walk is iterative with the depth limit of ``load_json``; base64 and data
URLs are decoded only up to ``MAX_ATTACHMENT_BYTES`` each (a larger text attachment is refused
upstream by the caller, a larger binary one is only labelled).

Segment kinds (``TextSegment.kind``) and how a redaction is written back:
- ``text``: a reading-view string (the extractor's), replaced in place.
- ``value``: any other string value, replaced in place.
- ``key``: an object key (``path`` ends with the key), renamed.
- ``number``: a JSON number written as digits, replaced by the redacted text (a string).
- ``numbers``: the numbers of one JSON array (two or more, of any length), written with a space
  between them; a redaction replaces the array by the redacted text (a string).
- ``attachment``: the decoded text of an attachment at ``path``, re-encoded as it came.
- ``route``: text from the request path (a model name); cannot be rewritten, so a redaction
  there becomes a deny.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import urllib.parse
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ext_proc.providers.adapters import ParsedRequest, _get_path, _set_path, field_changes
from ext_proc.providers.body import (
    JSON_STEP,
    MAX_SEGMENTS,
    BadRequestBody,
    Path,
    TextSegment,
    dump_json,
    load_json,
)

MAX_ATTACHMENT_BYTES = 4 * 1024 * 1024
_SHORT_PAYLOAD = 4096
MAX_NESTED_JSON_BYTES = 4 * 1024 * 1024


_KEY: list[Any] = []          # marks a stack entry that is an object key
# Segment kinds written in the field view without quotes: a number, and the numbers of an array.
NUMBER_KINDS = ("number", "numbers")
# OpenAI's token arrays (`input` / `prompt` of embeddings, completions, moderations: a list of
# token ids, or a list of such lists): ids the model reads as tokens, not digits the model reads.
_TOKEN_ARRAY_KEYS = frozenset({"input", "prompt"})
_PAIRED_TEXT = 1024
# The object views' runs (Document.object_views): a value split over at most RUN_PIECES
# neighbouring fields, of at most RUN_CHARS characters together (the longest finding but a key
# block's or a JWT's is 262 normalized characters; those need no boundary and are read in the
# glued view). Runs are written one after another with RUN_BREAK between them: more than the
# three characters of punctuation a card's groups may have between them, and a `#` no key
# block's or token's body holds, so no finding joins two.
RUN_PIECES = 5
RUN_CHARS = 800
RUN_BREAK = "\n\n#\n\n"
# String values under these keys are encoded payloads (base64 or a data: URL) in every provider's
# format: OpenAI file_data / input_audio.data / b64_json, Anthropic source.data, Gemini
# inlineData.data, Bedrock source.bytes.
_PAYLOAD_KEYS = frozenset({"data", "bytes", "file_data", "b64_json", "fileData"})
# Where a payload's media type is written (same object, then up to two levels above).
_MEDIA_KEYS = ("media_type", "mime_type", "mimeType", "content_type", "format")
# String values under these keys name content the provider fetches itself.
_REMOTE_KEYS = frozenset({"url", "uri", "image_url", "file_url", "fileUri", "file_uri", "audio_url",
                          "video_url", "document_url"})
_FILE_REF_KEYS = frozenset({"file_id", "fileId"})
_REMOTE_SCHEMES = ("http://", "https://", "gs://", "s3://", "ftp://")
# Bedrock document/image formats and OpenAI audio formats that name a media type by extension.
_FORMAT_TYPES = {
    "txt": "text/plain", "md": "text/markdown", "csv": "text/csv", "html": "text/html",
    "json": "application/json", "xml": "application/xml", "yaml": "text/yaml",
    "pdf": "application/pdf", "doc": "application/msword", "docx": "application/msword",
    "xls": "application/vnd.ms-excel", "xlsx": "application/vnd.ms-excel",
    "png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac",
    "ogg": "audio/ogg", "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
}
# Magic numbers of binary formats: these are never decoded as text, whatever the type says.
_MAGIC = (
    (b"\x89PNG", "image"), (b"\xff\xd8\xff", "image"), (b"GIF8", "image"), (b"RIFF", "audio"),
    (b"ID3", "audio"), (b"OggS", "audio"), (b"fLaC", "audio"), (b"%PDF", "pdf"),
    (b"PK\x03\x04", "document"), (b"\xd0\xcf\x11\xe0", "document"), (b"\x1aE\xdf\xa3", "video"),
)
_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "utf-8", "ascii": "utf-8",
             "utf-16": "utf-16", "utf-16le": "utf-16-le", "utf-16be": "utf-16-be",
             "iso-8859-1": "latin-1", "latin1": "latin-1", "latin-1": "latin-1"}


@dataclass(frozen=True, slots=True)
class Encoding:
    """How an attachment's text was written in the body, so a redaction is written back alike."""

    scheme: str            # "base64" (a bare payload) or "data_url"
    header: str = ""       # a data URL's "data:text/plain;base64," part, kept as it was
    base64: bool = True    # data URLs may be percent-encoded instead
    charset: str = "utf-8"
    urlsafe: bool = False


@dataclass
class View:
    """Text made of pieces, some of which are segments: findings in it map back to segments."""

    text: str
    starts: list[int]      # offset in text of each mapped piece
    segments: list[int]    # the segment index of each mapped piece
    lengths: list[int]
    offsets: list[int] | None = None   # where in its segment each piece starts (None: all at 0)
    # Offsets in text where a field of its own begins (increasing; None: one text throughout).
    # The classifier reads a value's context words within its field only (Classifier.scan).
    fences: list[int] | None = None

    def pieces(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(segment, start, end) in segment offsets for every mapped piece [start, end) touches."""
        out = []
        i = max(0, bisect_right(self.starts, start) - 1)
        while i < len(self.starts) and self.starts[i] < end:
            ps, pl = self.starts[i], self.lengths[i]
            s, e = max(start, ps), min(end, ps + pl)
            if s < e:
                off = self.offsets[i] - ps if self.offsets is not None else -ps
                out.append((self.segments[i], s + off, e + off))
            i += 1
        return out


def _view(items: list[tuple[int, str]], glue_before: list[str], glue_after: list[str] | None = None,
          *, edge: int | None = None, fence_before: list[bool] | None = None,
          inner: Mapping[int, list[int]] | None = None) -> View:
    """A view of ITEMS (segment index, text), each preceded by its glue (and followed by one).
    EDGE: only the first and last EDGE characters of a longer text are written (a newline
    between them), for views that exist to find what crosses from one text into the next.
    FENCE_BEFORE: the items before whose glue a field of its own begins; INNER: segment -> the
    offsets in its text where a field begins (a string that is JSON): both become View.fences."""
    parts: list[str] = []
    starts: list[int] = []
    segments: list[int] = []
    lengths: list[int] = []
    offsets: list[int] = []
    fences: list[int] = []
    pos = 0
    for n, (i, text) in enumerate(items):
        if fence_before is not None and fence_before[n] and pos:
            fences.append(pos)
        within = inner.get(i) if inner else None
        g = glue_before[n]
        if g:
            parts.append(g)
            pos += len(g)
        if text:
            if edge is not None and len(text) > 2 * edge + 1:
                cuts = [(0, text[:edge]), (len(text) - edge, text[-edge:])]
            else:
                cuts = [(0, text)]
            for k, (off, piece) in enumerate(cuts):
                if k:
                    parts.append("\n")
                    pos += 1
                starts.append(pos)
                segments.append(i)
                lengths.append(len(piece))
                offsets.append(off)
                parts.append(piece)
                if within:
                    lo = bisect_left(within, off)
                    hi = bisect_left(within, off + len(piece))
                    fences.extend(pos + f - off for f in within[lo:hi] if pos + f - off)
                pos += len(piece)
                if within:   # a field of the JSON ends with the string: what follows is no context
                    fences.append(pos)
        if glue_after is not None and glue_after[n]:
            parts.append(glue_after[n])
            pos += len(glue_after[n])
    return View("".join(parts), starts, segments, lengths, offsets, fences or None)


@dataclass
class Document:
    """Every string of a request body that something downstream reads, and how it is read."""

    segments: list[TextSegment]
    reading: list[int]                     # indices of the reading-view segments, in order
    encodings: dict[int, Encoding] = field(default_factory=dict)
    unscanned: dict[str, int] = field(default_factory=dict)   # label -> count
    # Keys, values and numbers in document order (and short reading-view strings again, beside
    # their key): the field view.
    field_order: list[int] = field(default_factory=list)
    # Strings that are JSON documents (read again as such): segment -> where in its text each of
    # its fields begins (json_fences), for the views' fences.
    json_fields: dict[int, list[int]] = field(default_factory=dict)
    # Groups of segments a reader of the JSON joins across fields (see object_views): the keys of
    # an object and of the objects nested in it, their string values, and one field's string
    # values across the sibling objects of an array. Each segment is in at most one group of each.
    object_groups: list[list[int]] = field(default_factory=list)
    # Strings the walk decoded as a binary payload and keeps as a value too (a key-sized string
    # that is valid base64): not decoded as base64 again (classify/decode.py).
    payload_values: set[int] = field(default_factory=set)

    def reading_views(self, edge: int | None = None) -> list[View]:
        """The text the model reads together. A value split across parts or turns must be found
        whatever surrounds it, so the reading view is written four ways: joined with the newline
        a provider puts between turns (each string whole, with boundaries around it); joined with
        nothing (a value split in many pieces mid-token); and in neighbouring pairs glued with
        nothing and a newline around each pair, once from the first string and once from the
        second (a value split in two whose neighbours would otherwise run into it). EDGE (the
        longest finding): the three glued views need only that much of each end of a text, since
        the newline view already holds every finding inside one text."""
        items = [(i, self.segments[i].text) for i in self.reading]
        n = len(items)
        ways = [["\n"] * n, [""] * n, ["" if k % 2 else "\n" for k in range(n)],
                ["\n" if k % 2 else "" for k in range(n)]][:1 if n < 2 else 2 if n == 2 else 4]
        views = []
        for k, glue in enumerate(ways):
            if n:
                glue[0] = ""
            views.append(_view(items, glue, edge=edge if k else None, inner=self.json_fields))
        return views

    def field_view(self) -> View:
        """Every other string, key and number in document order, written the way a reader of the
        JSON sees it (``"key": "value", ``), so a key and its value are read together (a
        ``"password": "..."`` pair) and values split across neighbouring fields are joined.

        A field that holds a number is fenced (View.fences): its key with its value, or with the
        numbers of the array it holds; in a string that is JSON too. A number's context words
        come from its own key and its own digits, never from a neighbouring key's name (`"seed":
        2736819303, "parallel_tool_calls": 0`: the `call` of the neighbour is no context for
        the seed, and masking it would turn the number into a string the provider refuses).
        Strings keep their neighbours' context: a key/value list (`{"field": "SSN", "value":
        "536228726"}`, FHIR's `{"system": ".../us-ssn", "value": ...}`) says what a value is in a
        sibling, and a masked string is still a string."""
        order = self.field_order
        segs = self.segments
        items = [(i, segs[i].text) for i in order]
        before = ['"' if segs[i].kind not in NUMBER_KINDS else "" for i in order]
        fence = []
        owner: Path | None = None
        for i in order:
            seg = segs[i]
            if seg.kind == "key":
                fence.append(True)
                owner = seg.path
                continue
            k = len(seg.path)             # a value's field: its path without array indices
            while k > 0 and isinstance(seg.path[k - 1], int):
                k -= 1
            mine = seg.path[:k]
            fence.append(mine != owner)
            owner = mine
        # Fields are numbered; only the fences that begin or end a field holding a number stay.
        field_of: list[int] = []
        for begins in fence:
            field_of.append(field_of[-1] + begins if field_of else 0)
        numeric = [False] * (field_of[-1] + 1 if field_of else 0)
        for n, i in enumerate(order):
            if segs[i].kind in NUMBER_KINDS:
                numeric[field_of[n]] = True
        fence = [begins and (numeric[f] or f > 0 and numeric[f - 1]) for begins, f in zip(fence, field_of, strict=True)]
        after = []
        for n, i in enumerate(order):
            kind = segs[i].kind
            if kind == "key":
                # A key whose value is not written here (an object, a short number, true, null)
                # gets a stand-in value, so it never runs into the next key.
                has_value = n + 1 < len(order) and segs[order[n + 1]].kind != "key" \
                    and segs[order[n + 1]].path == segs[i].path
                after.append('": ' if has_value else '": 0, ')
            else:
                after.append(", " if kind in NUMBER_KINDS else '", ')
        return _view(items, before, after, fence_before=fence, inner=self.json_fields)

    def array_views(self, edge: int | None = None) -> list[View]:
        """The strings of each JSON array joined with nothing, in order: a value spelled out one
        character (or a few) per element (`"stop": ["4", "1", "1", ...]`, a tool result that is a
        list of digits) is read by the model as the value, and the field view's `", "` between
        elements would keep it apart. Each string is in at most one array: linear. EDGE as in
        reading_views (the field view already holds every finding inside one string)."""
        groups: dict[Path, list[tuple[Path, int]]] = {}
        for i, seg in enumerate(self.segments):
            if seg.kind in ("text", "value") and seg.path and isinstance(seg.path[-1], int):
                k = len(seg.path)
                while k > 0 and isinstance(seg.path[k - 1], int):
                    k -= 1                       # arrays in arrays ([["4"], ["1"], ...]) are one
                groups.setdefault(seg.path[:k], []).append((seg.path[k:], i))
        views = []
        for members in groups.values():
            if len(members) < 2:
                continue
            members.sort()
            items = [(i, self.segments[i].text) for _, i in members]
            views.append(_view(items, [""] * len(items), edge=edge))
        return views


    def object_views(self, edge: int | None = None) -> list[View]:
        """A value split across the fields of an object (``{"a": "4111 1111", "b": "1111 1111"}``,
        ``{"p1": "jane.doe", "p2": "@example.com"}``, keys ``{"4111 1111": {"1111 1111": 1}}``)
        or across the same field of sibling objects (``[{"d": "4111"}, {"d": "1111"}, ...]``):
        a model reads the JSON and can join them. Each group (object_groups) joined with
        nothing, in document order: the keys of an object together with those of the objects
        nested in it; their string values likewise; one field's string values across an array's
        objects; and each object's own keys and values apart from those nested in it. An object
        inside another belongs to the outer one's chain and to its own group, so every key and
        string is in at most three groups: linear. Two views (one scan each): the groups glued,
        RUN_BREAK between groups, and their runs (below). EDGE as in reading_views."""
        views = []
        grouped: list[tuple[int, str]] = []
        between: list[str] = []
        runs: list[list[tuple[int, str]]] = []
        for members in self.object_groups:
            if len(members) < 2:
                continue
            items = [(i, self.segments[i].text) for i in members]
            between += [RUN_BREAK if grouped else ""] + [""] * (len(items) - 1)
            grouped += items
            runs.append(items)
        if grouped:
            views.append(_view(grouped, between, edge=edge))
        if runs:
            views.append(_runs_view(runs))
        return views


def _runs_view(groups: list[list[tuple[int, str]]]) -> View:
    """Every run of 2 to RUN_PIECES neighbouring items of each group, at most RUN_CHARS long,
    RUN_BREAK before each. Glued whole, a group's other keys run into a value's pieces
    ("toolSpec", "name", "inputSchema"... before "api_k", "ey: 2yW4..."), and a rule with a
    bounded name or domain before a boundary (`\b...{0,30}api_key`, an address's domain) no
    longer matches; read on its own, the run that is the value does. At most RUN_PIECES - 1 runs
    start at an item: linear. The longest of each start comes first (a value's whole run is found
    before a part of it, which is then already covered)."""
    parts: list[str] = []
    starts: list[int] = []
    segments: list[int] = []
    lengths: list[int] = []
    pos, brk = 0, len(RUN_BREAK)
    for items in groups:
        n = len(items)
        segs = [i for i, _ in items]
        texts = [t for _, t in items]
        sizes = [len(t) for t in texts]
        for a in range(n - 1):
            size, last = sizes[a], a
            top = min(a + RUN_PIECES, n)
            while last + 1 < top and size + sizes[last + 1] <= RUN_CHARS:
                last += 1
                size += sizes[last]
            for b in range(last, a, -1):
                if pos:
                    parts.append(RUN_BREAK)
                    pos += brk
                for k in range(a, b + 1):
                    starts.append(pos)
                    pos += sizes[k]
                parts += texts[a:b + 1]
                segments += segs[a:b + 1]
                lengths += sizes[a:b + 1]
    return View("".join(parts), starts, segments, lengths)


def _media_type(ancestors: list[dict[str, Any]]) -> str:
    for obj in ancestors:
        for key in _MEDIA_KEYS:
            v = obj.get(key)
            if isinstance(v, str) and v:
                v = v.strip().lower()
                return _FORMAT_TYPES.get(v, v)
    return ""


def _unscanned_kind(media_type: str, raw: bytes | None) -> str:
    if raw is not None:
        for magic, kind in _MAGIC:
            if raw.startswith(magic):
                return kind
    major = media_type.split("/", 1)[0]
    if major in ("image", "audio", "video"):
        return major
    if media_type == "application/pdf":
        return "pdf"
    if "word" in media_type or "excel" in media_type or "officedocument" in media_type:
        return "document"
    return "binary"


def _as_text(raw: bytes, media_type: str, charset: str | None) -> tuple[str, str] | None:
    """The text a provider would give its model from these bytes, or None when they are binary."""
    for magic, _kind in _MAGIC:
        if raw.startswith(magic):
            return None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        charset = "utf-16"
    codec = _CHARSETS.get((charset or "utf-8").lower(), "utf-8")
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text, codec


def _decode_payload(value: str) -> tuple[bytes, Encoding, str, str | None] | None:
    """(bytes, encoding, media type from a data URL, charset) of an encoded payload, or None when
    the string is not one (it is then inspected as a plain string)."""
    if value[:5].lower() == "data:":
        header, sep, payload = value.partition(",")
        if not sep:
            return None
        params = [p.strip() for p in header[5:].split(";")]
        media = params[0].lower() if params and "=" not in params[0] else ""
        is_b64 = any(p.lower() == "base64" for p in params[1:])
        charset = next((p.split("=", 1)[1].strip().lower() for p in params if p.lower().startswith("charset=")), None)
        if is_b64:
            raw = _b64(payload)
            if raw is None:
                return None
        else:
            raw = urllib.parse.unquote_to_bytes(payload)
        return raw, Encoding("data_url", header + ",", is_b64, charset or "utf-8"), media, charset
    raw = _b64(value)
    if raw is None:
        return None
    return raw, Encoding("base64", urlsafe="-" in value or "_" in value), "", None


def _b64(payload: str) -> bytes | None:
    # MIME line breaks are allowed; any other whitespace means it is text, not base64.
    s = payload.replace("\r", "").replace("\n", "")
    if not s or len(s) > MAX_ATTACHMENT_BYTES * 4 // 3 + 4:
        return None
    try:
        if "-" in s or "_" in s:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def encode_attachment(text: str, enc: Encoding) -> str:
    raw = text.encode(enc.charset if enc.charset in ("utf-8", "utf-16", "utf-16-le", "utf-16-be", "latin-1") else "utf-8",
                      "replace")
    if enc.scheme == "data_url":
        body = base64.b64encode(raw).decode("ascii") if enc.base64 else urllib.parse.quote_from_bytes(raw)
        return enc.header + body
    return (base64.urlsafe_b64encode(raw) if enc.urlsafe else base64.b64encode(raw)).decode("ascii")


def read_document(parsed: ParsedRequest | None, route_texts: Mapping[str, str] = {}) -> Document:
    """The generic walk over PARSED's body (None: a request without one). ROUTE_TEXTS: text from
    outside the body the provider reads (the model segment of a path), inspected but never
    rewritable."""
    segments: list[TextSegment] = list(parsed.segments) if parsed is not None else []
    reading = list(range(len(segments)))
    seen = {seg.path: i for i, seg in enumerate(segments)}
    doc = Document(segments, reading)
    order = doc.field_order

    def add(seg: TextSegment) -> int:
        if len(segments) >= MAX_SEGMENTS:
            raise BadRequestBody(f"body has more than {MAX_SEGMENTS} strings")
        segments.append(seg)
        return len(segments) - 1

    def unscanned(kind: str) -> None:
        label = "content.unscanned." + kind
        doc.unscanned[label] = doc.unscanned.get(label, 0) + 1

    nested_budget = [MAX_NESTED_JSON_BYTES]
    covered: set[int] = set()     # ids of arrays whose numbers an enclosing array's segment holds
    bare: set[int] = set()        # ids of arrays inside one with fewer than two numbers, or ids

    def nested_json(text: str) -> Any:
        """TEXT decoded when it is a JSON object or array (within the budget), else None."""
        t = text.strip()
        if len(t) < 2 or t[0] not in "{[" or t[-1] not in "}]" or len(t) > nested_budget[0]:
            return None
        try:
            obj = load_json(t.encode("utf-8", "surrogatepass"), nested_budget[0])
        except BadRequestBody:
            return None
        nested_budget[0] -= len(t)
        return obj

    # The object groups (Document.object_views): an object's keys, and its string values, with
    # those of the objects nested in it (OWNER[0]: the outermost object's chain) and on their own
    # (OWNER[1]: the object); one field's string values across the objects of an array (SIB:
    # ("a", array) for an array's object, ("f", array, key) for a string member of one).
    keys: dict[tuple[str, int], list[int]] = {}
    values: dict[tuple[str, int], list[int]] = {}
    sibling_fields: dict[tuple[Any, ...], list[int]] = {}
    # (node, path, ancestors: the enclosing objects, nearest first, at most three, owner, sib)
    stack: list[tuple[Any, Path, list[dict[str, Any]], tuple[int, int] | None, tuple[Any, ...] | None]] = \
        [(parsed.body, (), [], None, None)] if parsed is not None else []
    groups = 0
    contiguous: set[int] = set()
    while stack:
        node, path, ancestors, owner, sib = stack.pop()
        if ancestors is _KEY:
            i = add(TextSegment(path, node, "key"))
            order.append(i)
            if owner is not None:
                keys.setdefault(("chain", owner[0]), []).append(i)
                keys.setdefault(("own", owner[1]), []).append(i)
        elif isinstance(node, dict):
            inner = [node] + ancestors[:2]
            if owner is not None and not any(isinstance(v, dict) for v in node.values()):
                contiguous.add(groups + 1)   # its own members are a stretch of its chain's
            owner = (groups if owner is None else owner[0], groups + 1)
            groups += 2
            member_sib = sib[1] if sib is not None and sib[0] == "a" else None
            for k in reversed(list(node)):
                stack.append((node[k], path + (k,), inner, owner,
                              ("f", member_sib, k) if member_sib is not None else None))
                stack.append((k, path + (k,), _KEY, owner, None))
        elif isinstance(node, list):
            # The numbers of an array (and of the arrays inside it) are read together, whatever
            # their length ([4111, 1111, 1111, 1111], one digit per element, [[4111], [1111],
            # ...]): one segment, written with a space between them; a redaction there replaces
            # the array by the redacted text. Each array is read for numbers once: an array
            # inside one that took its numbers is "covered"; inside one that had fewer than two
            # (or is a token array), "bare", its numbers inspected one by one as before.
            skip_numbers = id(node) in covered
            if not skip_numbers and id(node) not in bare:
                nested: list[int] = []
                numbers = _array_numbers(node, nested)
                if len(numbers) >= 2 and not _token_array(path, node):
                    order.append(add(TextSegment(path, " ".join(_number_text(x) for x in numbers), "numbers")))
                    covered.update(nested)
                    skip_numbers = True
                else:
                    bare.update(nested)
            tag = ("a", groups)
            groups += 1
            for j in range(len(node) - 1, -1, -1):
                if not (skip_numbers and _is_number(node[j])):
                    stack.append((node[j], path + (j,), ancestors, None, tag))
        elif isinstance(node, str):
            key = path[-1] if path and isinstance(path[-1], str) else None
            is_payload = key in _PAYLOAD_KEYS and not (ancestors and ancestors[0].get("type") == "text")
            if is_payload or node[:5].lower() == "data:":
                decoded = _decode_payload(node)
                if decoded is not None:
                    raw, enc, url_media, charset = decoded
                    media = url_media or _media_type(ancestors)
                    as_text = _as_text(raw, media, charset)
                    if as_text is None:
                        unscanned(_unscanned_kind(media, raw))
                        if len(node) <= _SHORT_PAYLOAD and path not in seen:
                            # A key-sized string that happens to be valid base64 is read as text too.
                            i = add(TextSegment(path, node, "value"))
                            order.append(i)
                            doc.payload_values.add(i)
                    else:
                        text, codec = as_text
                        i = add(TextSegment(path, text, "attachment"))
                        doc.encodings[i] = Encoding(enc.scheme, enc.header, enc.base64, codec, enc.urlsafe)
                    continue
            if key in _REMOTE_KEYS and node.lower().startswith(_REMOTE_SCHEMES):
                unscanned("remote")
            elif key in _FILE_REF_KEYS and node:
                unscanned("file_ref")
            if path not in seen:
                i = add(TextSegment(path, node, "value"))
                order.append(i)
            else:
                i = seen[path]
                if len(node) <= _PAIRED_TEXT:
                    order.append(i)          # beside its key once more ({"password": "..."})
            inner_doc = nested_json(node)
            if inner_doc is not None:
                # Read as the JSON it holds (its own groups), not glued to its neighbours whole.
                stack.append((inner_doc, path + (JSON_STEP,), [], None, None))
                doc.json_fields[i] = json_fences(node, around_numbers=True)
            elif node and path not in seen:
                # The reading view's strings are read joined with each other there; glued to the
                # protocol fields beside them (a role, a type, an id) they would make values
                # nobody wrote ("assistant" + "@yahoo.com, thanks").
                if owner is not None:
                    values.setdefault(("chain", owner[0]), []).append(i)
                    values.setdefault(("own", owner[1]), []).append(i)
                if sib is not None and sib[0] == "f":
                    sibling_fields.setdefault(sib, []).append(i)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            digits = _number_text(node)
            if sum(c.isdigit() for c in digits) >= 7:   # short numbers cannot hold any finding
                order.append(add(TextSegment(path, digits, "number")))
    # An object's own group is its chain's when nothing is nested in it and nothing encloses it:
    # read once.
    doc.object_groups = [g for g in _distinct(keys, contiguous) + _distinct(values, contiguous)
                         + list(sibling_fields.values()) if len(g) >= 2]
    for name, text in route_texts.items():
        if text:
            add(TextSegment(("<route>", name), text, "route"))
    return doc


def json_fences(text: str, *, around_numbers: bool = False) -> list[int]:
    """Where the fields of TEXT, a JSON document, begin, in increasing order: each key's opening
    quote, and right after each closing brace or bracket (what follows a nested object is not
    its field). The fences the field view puts between fields (Document.field_view), inside a
    string that is JSON. Linear: str.find over the text (the next closer of each kind is found
    once and kept until passed), a run of backslashes read once, before the quote it escapes or
    not. AROUND_NUMBERS: only the fences that begin or end a field whose value is a number
    (Document.field_view says why)."""
    out: list[int] = []
    numeric: list[bool] = []      # per fence: the field it begins holds a number
    n, pos = len(text), 0
    brace, bracket = text.find("}"), text.find("]")
    while pos < n:
        q = text.find('"', pos)
        stop = n if q == -1 else q
        while brace != -1 and brace < stop or bracket != -1 and bracket < stop:   # closers before it
            if bracket == -1 or brace != -1 and brace < bracket:
                out.append(brace + 1)
                brace = text.find("}", brace + 1)
            else:
                out.append(bracket + 1)
                bracket = text.find("]", bracket + 1)
            numeric.append(False)
        if q == -1:
            break
        e = text.find('"', q + 1)
        while e != -1 and text[e - 1] == "\\":       # escaped, unless the backslashes pair up
            b = e - 1
            while text[b - 1] == "\\":               # (b > q: the opening quote stops it)
                b -= 1
            if (e - b) % 2 == 0:
                break
            e = text.find('"', e + 1)
        if e == -1:
            break
        k = e + 1
        while k < n and text[k] in " \t\r\n":
            k += 1
        if k < n and text[k] == ":":
            out.append(q)
            k += 1
            while k < n and text[k] in " \t\r\n[":
                k += 1
            numeric.append(k < n and text[k] in "-0123456789")
        pos = e + 1
        if brace != -1 and brace < pos:              # closers inside the string are not closers
            brace = text.find("}", pos)
        if bracket != -1 and bracket < pos:
            bracket = text.find("]", pos)
    if around_numbers:
        return [f for j, f in enumerate(out) if numeric[j] or j and numeric[j - 1]]
    return out


def _distinct(groups: dict[tuple[str, int], list[int]], contiguous: set[int]) -> list[list[int]]:
    """The chains and the objects' own groups, an own group left out when it is its chain's or a
    stretch of it (an object nested in another without objects of its own inside)."""
    out = []
    chains = {k[1]: g for k, g in groups.items() if k[0] == "chain"}
    for (kind, n), g in groups.items():
        if kind == "chain" or n not in contiguous and chains.get(n - 1) != g:
            out.append(g)
    return out


def _number_text(n: int | float) -> str:
    return repr(n)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _array_numbers(node: list[Any], nested: list[int]) -> list[Any]:
    """The numbers of NODE and of the arrays nested in it, in order (objects and strings among
    them are skipped: their own walk reads them); the ids of the nested arrays go to NESTED."""
    out: list[Any] = []
    stack: list[Any] = [iter(node)]
    while stack:
        for x in stack[-1]:
            if _is_number(x):
                out.append(x)
            elif isinstance(x, list):
                nested.append(id(x))
                stack.append(iter(x))
                break
        else:
            stack.pop()
    return out


def _token_array(path: Path, node: list[Any]) -> bool:
    """An OpenAI token array: ids under a top-level `input` or `prompt` (a list of ids, a list of
    such lists, or one of those lists)."""
    if not (0 < len(path) <= 2 and path[0] in _TOKEN_ARRAY_KEYS and all(isinstance(p, int) for p in path[1:])):
        return False
    return all(isinstance(x, int) and not isinstance(x, bool)
               or len(path) == 1 and isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
               for x in node)


def render_document(parsed: ParsedRequest, doc: Document, replacements: Mapping[int, str],
                    set_fields: Mapping[tuple[Any, ...], object]) -> bytes:
    """The body with segment texts replaced (index -> new text) in every kind of place, and
    fields set (JSON path -> value, intermediate objects created). The original bytes when
    nothing changes."""
    values: list[tuple[Path, Any, bool]] = []
    renames: list[tuple[Path, str]] = []
    for idx, text in replacements.items():
        if not isinstance(text, str):
            raise TypeError("replacement text must be a string")
        seg = doc.segments[idx]
        if text == seg.text:
            continue
        if seg.kind == "route":
            raise ValueError("a route segment cannot be rewritten")
        if seg.kind == "key":
            renames.append((seg.path, text))
        elif seg.kind == "attachment":
            values.append((seg.path, encode_attachment(text, doc.encodings[idx]), False))
        else:
            values.append((seg.path, text, False))
    # An array whose numbers were redacted is replaced by the redacted text as a whole: edits of
    # anything else inside it went with it.
    gone = {doc.segments[idx].path for idx, text in replacements.items()
            if doc.segments[idx].kind == "numbers" and text != doc.segments[idx].text}
    if gone:
        def inside(p: Path) -> bool:
            return any(p[:k] in gone for k in range(len(p)))
        values = [v for v in values if not inside(v[0])]
        renames = [r for r in renames if not inside(r[0])]
    values += field_changes(parsed.body, set_fields)
    if not values and not renames and parsed.raw:
        return parsed.raw
    obj = copy.deepcopy(parsed.body)
    # A string that is itself JSON and has edits inside is rewritten from those edits; an edit of
    # the string as a whole would be lost in that rewrite, and the strings inside cover it.
    nested_parents = {p[:p.index(JSON_STEP)] for p, *_ in values + renames if JSON_STEP in p}
    values = [v for v in values if not (JSON_STEP not in v[0] and v[0] in nested_parents)]
    for path, value, create in values:        # paths still name the original keys
        _edit(obj, path, lambda o, p, v=value, c=create: _set_path(o, p, v, create=c))
    # Deepest first, so an enclosing key is renamed after everything below it was addressed.
    for path, new_key in sorted(renames, key=lambda r: -len(r[0])):
        _edit(obj, path, lambda o, p, k=new_key: _rename(o, p, k))
    return dump_json(obj)


def _edit(obj: Any, path: Path, change: Any) -> None:
    """Apply CHANGE(document, path) at PATH, decoding and re-encoding every string on the way
    that is itself a JSON document (a JSON_STEP in the path)."""
    if JSON_STEP not in path:
        change(obj, path)
        return
    i = path.index(JSON_STEP)
    outer, inner = path[:i], path[i + 1:]
    text = _get_path(obj, outer)
    if not isinstance(text, str):
        raise ValueError("cannot edit inside a JSON string: it is gone")
    inner_obj = json.loads(text)
    _edit(inner_obj, inner, change)
    _set_path(obj, outer, json.dumps(inner_obj, ensure_ascii=False), create=False)


def _rename(obj: Any, path: Path, new_key: str) -> None:
    parent = obj if len(path) == 1 else _get_path(obj, path[:-1])
    old = path[-1]
    if not isinstance(parent, dict) or old not in parent:
        raise ValueError("cannot rename a key: its object is gone")
    name, n = new_key, 2
    while name in parent and name != old:
        name = f"{new_key}#{n}"
        n += 1
    items = [(name if k == old else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
