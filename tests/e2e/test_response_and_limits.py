"""Response inspection and rate limits through the real Envoy with the official SDKs, under a
strict test policy (tests/e2e/policies/strict.yaml)."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.support import REPO, mock_reply, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strict")
    cfg = tmp / "ledgergate.yaml"
    (tmp / "capture.key").write_bytes(bytes(range(32)))
    cfg.write_text(json.dumps({"policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "strict.yaml")},
                               "audit": {"capture": {"key_file": str(tmp / "capture.key"), "key_id": "legal-1"}}}))
    s = start_stack(tmp, "--config", str(cfg))
    yield s
    s.stop()


def client(stack, reply: str, chunk: int = 3, sub: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(sub=sub), max_retries=0, timeout=30,
                         default_headers={"x-mock-reply": mock_reply(reply), "x-mock-chunk-chars": str(chunk)})


def test_stream_redaction_across_chunk_boundaries(strict):
    reply = "Contact jane.doe@example.com for details."
    stream = client(strict, reply).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "who?"}], stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == "Contact [PII.EMAIL] for details."


def test_stream_passes_clean_text_unchanged_and_records_usage(strict):
    reply = "Nothing sensitive in this answer, just words and more words."
    raw = client(strict, reply, chunk=2).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert raw.headers.get("x-ledgergate-policy") == "e2e-strict"
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    assert text == reply
    rid = raw.headers["x-request-id"]
    outcome = [r for r in strict.audit_records() if r.get("request_id") == rid and r.get("kind") == "outcome"]
    assert outcome and outcome[0]["usage"]["output_tokens"] > 0 and outcome[0]["blocked"] is None


def test_mid_stream_block_surfaces_as_an_sdk_error(strict):
    reply = "Here you go: 4111 1111 1111 1111 is the card."
    raw = client(strict, reply).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "card?"}], stream=True)
    rid = raw.headers["x-request-id"]
    got: list[str] = []   # what reached the client before the stream was stopped
    with pytest.raises(openai.APIError):
        for c in raw.parse():
            if c.choices:
                got.append(c.choices[0].delta.content or "")
    delivered = "".join(got)
    assert "4111" not in delivered and "1111" not in delivered
    assert "Here you go" in delivered   # the text before the card number was released, not all held back
    (outcome,) = [r for r in strict.audit_records() if r.get("request_id") == rid and r.get("kind") == "outcome"]
    assert outcome["blocked"]["label"] == "pci.card_number"


def test_anthropic_stream_block_and_redaction(strict):
    headers = {"x-mock-reply": mock_reply("Mail bob@example.org now."), "x-mock-chunk-chars": "3"}
    a = anthropic.Anthropic(base_url=strict.base_url, api_key=strict.token(), max_retries=0, default_headers=headers)
    with a.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                           messages=[{"role": "user", "content": "x"}]) as s:
        assert "".join(s.text_stream) == "Mail [PII.EMAIL] now."
    headers = {"x-mock-reply": mock_reply("key AKIAIOSFODNN7ABCDEFG ok"), "x-mock-chunk-chars": "4"}
    a = anthropic.Anthropic(base_url=strict.base_url, api_key=strict.token(), max_retries=0, default_headers=headers)
    got: list[str] = []
    with pytest.raises(anthropic.APIError):
        with a.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                               messages=[{"role": "user", "content": "x"}]) as s:
            for text in s.text_stream:
                got.append(text)
    assert "AKIA" not in "".join(got)   # nothing of the key reached the client before the error


def test_non_streaming_response_is_redacted(strict):
    c = client(strict, "reach me at carol@example.net")
    out = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "reach me at [PII.EMAIL]"


def test_rate_limit_429_with_openai_headers_and_a_record(strict):
    c = openai.OpenAI(base_url=f"{strict.base_url}/v1", api_key=strict.token(sub="limited-bob"), max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    h = ei.value.response.headers
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert int(h["retry-after"]) > 0
    rid = h["x-request-id"]
    rec = [r for r in strict.audit_records() if r.get("request_id") == rid]
    assert rec and rec[0]["decision"]["outcome"] == "deny" and rec[0]["ratelimit"]["throttled_by"] == "tiny-budget"
    # Another subject has its own budget.
    other = openai.OpenAI(base_url=f"{strict.base_url}/v1", api_key=strict.token(sub="limited-eve"), max_retries=0)
    other.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_metrics_endpoint_has_no_content_labels(strict):
    text = httpx.get(f"http://127.0.0.1:{strict.metrics_port}/metrics").text
    assert "ledgergate_decisions_total" in text and "ledgergate_phase_seconds" in text
    assert "@example" not in text and "4111" not in text


def test_audit_replay_reproduces_every_decision(strict):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "replay", str(strict.audit_dir),
                          "--policy-store", str(strict.var_dir / "policy-store")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    replayed = int(res.stdout.split("replayed ")[1].split()[0])
    assert replayed >= 5


def test_replay_reports_a_decision_that_does_not_reproduce():
    from ext_proc.audit.query import replay

    recs = [{"kind": "decision", "request_id": "a", "policy": {"version": "v1"}, "input": {"x": 1},
             "decision": {"outcome": "permit"}},
            {"kind": "decision", "request_id": "b", "policy": {"version": "v1"}, "input": {"x": 2},
             "decision": {"outcome": "deny", "code": "rate_limited", "policy_outcome": "permit"}},
            {"kind": "decision", "request_id": "c", "policy": {}, "input": {}, "decision": {"outcome": "deny"}}]
    rep = replay(recs, lambda v, inp: {"outcome": "permit" if inp["x"] == 2 else "deny"})
    assert rep["replayed"] == 2 and rep["skipped"] == 1
    assert [m["request_id"] for m in rep["mismatches"]] == ["a"]


def test_encrypted_capture_holds_the_original_request_for_legal_hold(strict):
    from ext_proc.audit.capture import open_capture

    raw = client(strict, "ok").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "mail zed@example.com"}])
    rid = raw.headers["x-request-id"]
    rec = [r for r in strict.audit_records() if r.get("request_id") == rid and r["kind"] == "decision"][0]
    assert "zed@example.com" not in json.dumps(rec)
    original = open_capture(bytes(range(32)), rec["capture"], rid.encode())
    assert b"zed@example.com" in original


def test_encrypted_capture_holds_the_response_as_delivered(strict):
    from cryptography.exceptions import InvalidTag

    from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, open_capture

    reply = "Contact jane.doe@example.com for details."
    raw = client(strict, reply).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "who?"}], stream=True)
    rid = raw.headers["x-request-id"]
    delivered = b"".join(raw.http_response.iter_bytes())
    rec = [r for r in strict.audit_records() if r.get("request_id") == rid and r["kind"] == "outcome"][0]
    assert "jane.doe" not in json.dumps(rec)
    opened = open_capture(bytes(range(32)), rec["capture"], rid.encode() + RESPONSE_CAPTURE_AAD)
    assert opened == delivered and b"jane.doe@example.com" not in opened  # what the client got: redacted
    assert rec["capture"]["truncated"] is False
    with pytest.raises(InvalidTag):
        open_capture(bytes(range(32)), rec["capture"], rid.encode())  # not usable as the request's capture


def test_a_blocked_whole_json_answer_is_an_error_status_the_sdks_raise(strict):
    reply = "Here you go: 4111 1111 1111 1111 is the card."
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(strict, reply).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "card?"}])
    assert err.value.status_code == 403 and err.value.code == "response_blocked"
    assert "4111" not in err.value.response.text
    rid = err.value.response.headers["x-request-id"]
    out = [r for r in strict.audit_records() if r.get("request_id") == rid and r["kind"] == "outcome"][0]
    assert (out["status"], out["delivered_status"], out["blocked"]["label"]) == (200, 403, "pci.card_number")

    headers = {"x-mock-reply": mock_reply(reply)}
    a = anthropic.Anthropic(base_url=strict.base_url, api_key=strict.token(), max_retries=0, default_headers=headers)
    with pytest.raises(anthropic.PermissionDeniedError):
        a.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "x"}])


def test_a_clean_whole_json_answer_keeps_its_status_and_bytes(strict):
    raw = client(strict, "nothing to see").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content == "nothing to see"
    assert raw.headers["x-ledgergate-policy"] == "e2e-strict"
