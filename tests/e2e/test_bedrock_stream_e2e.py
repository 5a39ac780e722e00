"""Bedrock ConverseStream through the real Envoy and ledgergate with botocore's own
bedrock-runtime client (the AWS SDK), authenticating to the gateway with a bearer token
(AWS_BEARER_TOKEN_BEDROCK, as Bedrock API keys do) over TLS: a clean stream arrives intact (byte
for byte: tests/e2e/test_passthrough_exact.py), an
e-mail split over deltas is redacted, a card number stops the stream with an exception botocore
raises."""

from __future__ import annotations

import json

import botocore.config
import botocore.session
import pytest
from botocore.exceptions import EventStreamError

from tests.support import REPO, mock_reply, start_stack, unique_marker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack under the strict test policy (response redaction and blocks)."""
    tmp = tmp_path_factory.mktemp("bedrock")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "strict.yaml")}}))
    s = start_stack(tmp, "--config", str(cfg))
    yield s
    s.stop()

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


def bedrock(stack, monkeypatch, reply: str, chunk: int = 3):
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", stack.token())
    # botocore sends a bearer token only over HTTPS: the stack's TLS listener, its dev certificate.
    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=f"https://127.0.0.1:{stack.tls_port}",
        verify=str(stack.var_dir / "dev" / "tls" / "server.crt"),
        config=botocore.config.Config(retries={"max_attempts": 1}))

    def directives(request, **_):
        request.headers["x-mock-reply"] = mock_reply(reply)
        request.headers["x-mock-chunk-chars"] = str(chunk)
    client.meta.events.register("before-send.bedrock-runtime.*", directives)
    return client


def converse(client, marker: str) -> list[dict]:
    resp = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": marker}]}])
    return list(resp["stream"])


def text_of(events: list[dict]) -> str:
    return "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)


def test_a_clean_converse_stream_arrives_intact(stack, monkeypatch):
    marker = unique_marker("bedrock")
    reply = "A calm and ordinary answer without anything sensitive in it, for the record."
    events = converse(bedrock(stack, monkeypatch, reply), marker)
    assert text_of(events) == reply
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0
    sent = [r for r in stack.mock_requests() if marker in r["body"]][0]
    assert sent["headers"].get("Authorization") is None and sent["headers"].get("authorization") is None


def test_an_email_split_over_deltas_is_redacted(stack, monkeypatch):
    events = converse(bedrock(stack, monkeypatch, "Write to jane.doe@example.com today please.", chunk=2),
                      unique_marker("bedrock"))
    got = text_of(events)
    assert "jane.doe@example.com" not in got and "[PII.EMAIL]" in got


def test_a_secret_stops_the_stream_with_an_exception_botocore_raises(stack, monkeypatch):
    client = bedrock(stack, monkeypatch, "here: AKIAIOSFODNN7ABCDEFG is the key, use it well.", chunk=3)
    resp = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": unique_marker("bedrock")}]}])
    rid = resp["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    events: list[dict] = []   # what reached the client before the exception
    with pytest.raises(EventStreamError) as err:
        for event in resp["stream"]:
            events.append(event)
    assert "modelStreamErrorException" in str(err.value)
    assert "AKIA" not in str(err.value) and "AKIA" not in json.dumps(events)
    (outcome,) = [r for r in stack.audit_records() if r.get("request_id") == rid and r.get("kind") == "outcome"]
    assert outcome["blocked"]["label"].startswith("secret.")
