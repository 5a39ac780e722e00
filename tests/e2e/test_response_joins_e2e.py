"""The remaining response-side joins of issue 18 through the real Envoy and ledgergate under the
default policy, read by the official openai SDK (its own ChatCompletionStreamState joins the
deltas): a key split over strings sent once (role, tool call id and name) and continued later;
a key spelled across logprob alternatives and bytes; an 8,192-bit PEM block behind a disguised
header; a 20,000-character JWT cut into 1-12 character deltas. The upstream's exact events come
from the mock's x-mock-body directive."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.support import mock_reply
from tests.unit.test_response_joins import (
    AWS,
    ONCE_SENT,
    WORDS,
    chat,
    fake_pem,
    logprob_chat,
    long_jwt,
    longest_part,
    pieces_out,
)

pytestmark = pytest.mark.e2e


def client(stack, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=0, timeout=60,
                         default_headers=headers)


def body_directive(body: bytes, chunk: int = 5) -> dict:
    return {"x-mock-body": "b64:" + base64.b64encode(body).decode(), "x-mock-chunk-chars": str(chunk)}


def read(c: openai.OpenAI) -> tuple[list, dict]:
    """(raw chunks as dicts, the completion snapshot the SDK's stream state joined)."""
    state = ChatCompletionStreamState()
    chunks = []
    try:
        for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}],
                                               stream=True):
            chunks.append(chunk.to_dict())
            state.handle_chunk(chunk)
    except openai.APIError:
        pass
    snap = state.current_completion_snapshot.to_dict() if chunks else {}
    return chunks, snap


@pytest.mark.parametrize("case", ["role-next", "role-later", "tool-id", "tool-name"])
def test_a_key_continued_in_a_once_sent_field_never_reaches_the_sdk_in_part(stack, case):
    chunks, snap = read(client(stack, **body_directive(chat(ONCE_SENT[case]))))
    assert chunks
    assert longest_part(AWS, [json.dumps(chunks), json.dumps(snap)]) < 4


@pytest.mark.parametrize("case", ["second-best-rank", "chosen-bytes"])
def test_a_key_spelled_in_logprob_alternatives_or_bytes_is_masked(stack, case):
    from tests.unit.test_response_joins import LOGPROB_CASES
    chunks, _snap = read(client(stack, **body_directive(logprob_chat(LOGPROB_CASES[case], WORDS))))
    ranks: dict = {}
    for ch in chunks:
        for c in ch["choices"]:
            for e in (c.get("logprobs") or {}).get("content") or []:
                ranks.setdefault("bytes", []).extend(e.get("bytes") or [])
                for r, a in enumerate(e.get("top_logprobs") or []):
                    ranks.setdefault(r, []).append(a["token"])
    views = [bytes(ranks.get("bytes", [])).decode("utf-8", "replace")]
    views += ["".join(v) for k, v in ranks.items() if k != "bytes"]
    assert ranks and longest_part(AWS, views) < 5


def test_an_8192_bit_key_behind_a_full_width_header_is_masked_whole(stack):
    key = fake_pem(8192, seed=21)
    lines = key.splitlines()[1:-1]
    disguised = key.replace("-----BEGIN", "-----\uff22\uff25\uff27\uff29\uff2e")
    c = client(stack, **{"x-mock-reply": mock_reply("Here:\n" + disguised + "\nkeep it."), "x-mock-chunk-chars": "7"})
    _chunks, snap = read(c)
    content = snap["choices"][0]["message"]["content"]
    assert not any(line in content for line in lines) and "keep it." in content


def test_a_20000_character_jwt_in_tiny_deltas_is_masked_whole(stack):
    token = long_jwt(15000, seed=22)
    c = client(stack, **{"x-mock-reply": mock_reply("token: " + token + " done."), "x-mock-chunk-chars": "11"})
    _chunks, snap = read(c)
    content = snap["choices"][0]["message"]["content"]
    assert pieces_out(token, [content]) == 0 and content.endswith(" done.")
