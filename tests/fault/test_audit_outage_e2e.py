"""No unaudited byte, through the real Envoy with the mock upstream as the witness: when the
decision record of an authenticated, permitted request cannot be committed (the real PostgreSQL
sink cut off mid-run), the request does not reach the upstream and the client gets a 503 in its
provider's own format. PostgreSQL being down makes this test error, never skip."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from ext_proc.audit.postgres import read_segments
from tests.pg import dsn_for, lock_out, read_dsn_for, writer_role
from tests.support import start_stack, unique_marker

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

TABLE = "audit_records"


@pytest.fixture
def pg_stack(tmp_path):
    with writer_role("lg_outage") as role:
        cfg = tmp_path / "ledgergate.yaml"
        cfg.write_text(json.dumps({"audit": {"sink": "postgres", "dsn": dsn_for(role), "table": TABLE}}))
        s = start_stack(tmp_path / "stack", "--config", str(cfg))
        try:
            yield s, role
        finally:
            s.stop()


def _recorded_request_ids(role: str) -> set[str]:
    return {json.loads(line).get("request_id")
            for _name, lines, _torn in read_segments(read_dsn_for(role), TABLE) for line in lines}


def _reached_upstream(stack, marker: str) -> bool:
    return any(marker in r["body"] for r in stack.mock_requests())


def test_a_request_whose_decision_cannot_be_committed_never_reaches_the_upstream(pg_stack):
    s, role = pg_stack
    token = s.token()
    oa = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=token, max_retries=0, timeout=30)
    an = anthropic.Anthropic(base_url=s.base_url, api_key=token, max_retries=0, timeout=30)

    # The witness works: the same kind of request, while the sink is up, is forwarded and recorded.
    before = unique_marker("before")
    raw = oa.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                       messages=[{"role": "user", "content": before}])
    assert raw.http_response.status_code == 200 and _reached_upstream(s, before)
    assert raw.headers["x-request-id"] in _recorded_request_ids(role)

    lock_out(role)

    during = unique_marker("during")
    with pytest.raises(openai.APIStatusError) as err:
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": during}])
    during_anthropic = unique_marker("during")
    with pytest.raises(anthropic.APIStatusError) as aerr:
        an.messages.create(model="claude-3-5-haiku-latest", max_tokens=32,
                           messages=[{"role": "user", "content": during_anthropic}])

    # The promise first: nothing reached the upstream without a committed decision record.
    assert not _reached_upstream(s, during), "a request without a committed decision record reached the upstream"
    assert not _reached_upstream(s, during_anthropic), "an unrecorded Anthropic request reached the upstream"
    # Then the client's view: a 503 in each provider's own error shape, from ledgergate itself.
    assert err.value.status_code == 503
    assert err.value.body["code"] == "audit_unavailable" and err.value.body["type"]  # OpenAI's error shape
    assert aerr.value.status_code == 503
    assert aerr.value.body["type"] == "error" and aerr.value.body["error"]["type"] == "overloaded_error"
    assert err.value.response.headers["x-request-id"] not in _recorded_request_ids(role)
