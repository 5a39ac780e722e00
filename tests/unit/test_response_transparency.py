"""The Article 50 transparency marker: header values, the optional JSON field in whole answers,
and what the outcome records."""

from __future__ import annotations

import json

import httpx
import openai

from ext_proc.classify import Classifier
from ext_proc.streaming import ResponseInspector, ResponseRules
from ext_proc.streaming.transparency import DISCLOSURE_HEADER, transparency_marker

CLF = Classifier()


def marker(**spec):
    return transparency_marker({"name": "x-ledgergate-policy", "value": "p", **spec}, provider="openai",
                               model="gpt-4o-mini\r\nx-evil: 1", policy_id="ledgergate-default",
                               policy_version="3f2a9c01d4e5" + "0" * 52)


def test_the_disclosure_names_provider_model_and_policy_in_safe_ascii():
    m = marker()
    assert m.disclosure == ("ai-generated; provider=openai; model=gpt-4o-mini__x-evil:_1; "
                            "policy=ledgergate-default@3f2a9c01d4e5")
    assert m.record(json_field_sent=False)["header"] == {"x-ledgergate-policy": "p", DISCLOSURE_HEADER: m.disclosure}
    assert transparency_marker(None, provider="openai", model="m", policy_id="x", policy_version="v") is None


def test_the_json_field_is_added_to_whole_answers_and_the_sdk_keeps_it():
    m = marker(json_field="ai_disclosure")
    body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}).encode()
    ins = ResponseInspector("openai.chat_completions", status=200, content_type="application/json",
                            content_encoding=None, classifier=CLF, rules=ResponseRules(), hash_key=b"k" * 32,
                            tenant="t", marker_field=(m.json_field, m.json_value()))
    out = b"".join(r.body for r in ins.feed(body, True))
    assert ins.outcome()["marker_field"] == "ai_disclosure"
    client = openai.OpenAI(api_key="x", base_url="http://t/v1", http_client=httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(200, headers={"content-type": "application/json"}, content=out))))
    done = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert done.choices[0].message.content == "Hi."
    assert done.model_extra["ai_disclosure"]["ai_generated"] is True
    assert done.model_extra["ai_disclosure"]["provider"] == "openai"
    # Not on error answers, not without the option.
    err = ResponseInspector("openai.chat_completions", status=400, content_type="application/json",
                            content_encoding=None, classifier=CLF, rules=ResponseRules(), hash_key=b"k" * 32,
                            tenant="t", marker_field=(m.json_field, m.json_value()))
    assert b"".join(r.body for r in err.feed(b'{"error": {"message": "bad"}}', True)) == b'{"error": {"message": "bad"}}'
    assert "marker_field" not in err.outcome()
