"""The console's pages over HTTP (Starlette's test client, the real identity machinery with a dev
issuer): who may look, what every look leaves in the access log, search, export, the evidence
report, policy diffs, and the PostgreSQL store."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest
from starlette.testclient import TestClient

from ext_proc.console.app import Console, create_app
from ext_proc.console.auth import AccessLog, AuditorAuth, identity_config
from ext_proc.console.index import Index
from ext_proc.console.sample_store import write_sample_store
from ext_proc.console.store import FileStore, PostgresStore
from ext_proc.identity.dev import generate_dev_issuer, mint_dev_token
from ext_proc.policy import PolicyStore
from ext_proc.policy.store import load_policy_text
from tests.support import REPO

START = 1_795_900_000_000
HOUR = 3_600_000


@pytest.fixture
def env(tmp_path):
    var = tmp_path / "var"
    generate_dev_issuer(var / "dev")
    audit = tmp_path / "audit"
    policies = PolicyStore(var / "policy-store")
    base = (REPO / "policies" / "default.yaml").read_text()
    v1 = policies.put(load_policy_text(base))
    v2 = policies.put(load_policy_text(base.replace("roles: [developer]", "roles: [developer, analyst]")))
    write_sample_store(audit, requests=300, start_ms=START, span_ms=5 * HOUR, policy_versions=(v1, v2))

    def token(roles=("auditor",), sub="olivia", ttl=3600):
        return mint_dev_token(var / "dev", sub=sub, roles=list(roles), ttl_s=ttl, now=time.time())

    return {"var": var, "audit": audit, "token": token, "v1": v1, "v2": v2, "tmp": tmp_path}


def client_for(env, store=None, refresh_s=2.0):
    store = store or FileStore(env["audit"])
    console = Console(store, Index(env["tmp"] / "cache" / f"{uuid.uuid4().hex}.sqlite"),
                      AuditorAuth(identity_config(None, env["var"])), AccessLog(env["tmp"] / "access.jsonl"),
                      env["var"] / "policy-store", refresh_s=refresh_s)
    return TestClient(create_app(console))


def access(env):
    return [json.loads(line) for line in (env["tmp"] / "access.jsonl").read_text().splitlines()]


def test_only_an_auditor_with_a_valid_token_may_look_and_every_look_is_recorded(env):
    with client_for(env) as c:
        assert c.get("/search").status_code == 401
        r = c.get("/", headers={"accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        dev = env["token"](roles=("developer",), sub="mallory")
        assert c.get("/search", headers={"authorization": f"Bearer {dev}"}).status_code == 401
        expired = mint_dev_token(env["var"] / "dev", sub="olivia", roles=["auditor"], ttl_s=60,
                                 now=time.time() - 3600)
        assert c.get("/search", headers={"authorization": f"Bearer {expired}"}).status_code == 401
        forged = env["token"]()[:-4] + "AAAA"
        assert c.get("/search", headers={"authorization": f"Bearer {forged}"}).status_code == 401
        r = c.post("/login", data={"token": dev, "next": "/search"}, follow_redirects=False)
        assert r.status_code == 401 and "auditor" in r.text
        # Signing in sets an HttpOnly cookie; the next URL is kept to this site.
        good = env["token"]()
        r = c.post("/login", data={"token": good, "next": "//evil.example/x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/search?subject=alice").status_code == 200
    log = access(env)
    assert [e["status"] for e in log[:5]] == [401, 401, 401, 401, 401]
    assert log[-1]["subject"] == "olivia" and log[-1]["query"] == {"subject": "alice"}
    assert log[-1]["viewed"]["search"] == {"subject": "alice"}
    text = (env["tmp"] / "access.jsonl").read_text()
    assert good not in text and dev not in text


def test_search_pages_request_report_and_exports(env):
    h = {"authorization": f"Bearer {env['token']()}"}
    with client_for(env) as c:
        page1 = c.get("/search?decision=deny", headers=h).text
        assert "results-table" in page1 and 'class="badge permit"' not in page1
        j = c.get("/export.json?decision=deny", headers=h)
        assert j.status_code == 200 and "attachment" in j.headers["content-disposition"]
        exported = json.loads(j.text)["records"]
        assert exported and {e["outcome"] for e in exported} == {"deny"}
        assert 'hx-get="/search/count?decision=deny"' in page1  # the count loads apart from the page
        assert f"{len(exported)} matching decision" in c.get("/search/count?decision=deny", headers=h).text
        rows = list(csv.DictReader(io.StringIO(c.get("/export.csv?decision=deny", headers=h).text)))
        assert [r["request_id"] for r in rows] == [e["request_id"] for e in exported]
        # An htmx request for the results gets only the results fragment.
        frag = c.get("/search?decision=deny", headers={**h, "hx-request": "true", "hx-target": "results"}).text
        assert "<html" not in frag and "results-table" in frag
        rid = exported[0]["request_id"]
        page = c.get(f"/request/{rid}", headers=h).text
        assert page.count('record-state">verified') == 1  # a denied request has no outcome record
        report = c.get(f"/request/{rid}/report", headers=h).text
        assert "What was verified, and how" in report and 'record-state">verified' in report
        assert c.get("/request/no-such-request", headers=h).status_code == 404
        assert c.get("/export.xml", headers=h).status_code == 404
        # Charts render as SVG; a bar of the time chart links to a narrower range.
        charts = c.get("/charts?by=label", headers=h).text
        assert "<svg" in charts and "/charts?by=label&amp;from=" in charts
        overview = c.get("/", headers=h).text
        assert overview.count('class="badge verified"') == 2 and "broken" not in overview


def test_policies_in_force_and_their_diff(env):
    h = {"authorization": f"Bearer {env['token']()}"}
    with client_for(env) as c:
        page = c.get("/policies", headers=h).text
        assert page.index(env["v1"]) < page.index(env["v2"])  # in the order they came into force
        diff = c.get(f"/policies?a={env['v1']}&b={env['v2']}", headers=h).text
        assert 'id="policy-diff"' in diff and "analyst" in diff
        assert c.get(f"/policies/{env['v1']}", headers=h).status_code == 200
        # A stored text that does not hash to its version is never shown as that version.
        path = env["var"] / "policy-store" / f"{env['v1']}.json"
        path.write_bytes(path.read_bytes().replace(b"developer", b"everyone!"))
        assert c.get(f"/policies/{env['v1']}", headers=h).status_code == 404


@pytest.mark.postgres
def test_console_over_the_postgresql_store(env):
    psycopg = pytest.importorskip("psycopg")
    from ext_proc.audit.postgres import schema_sql

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    table = f"lg_console_t{uuid.uuid4().hex[:10]}"
    rows = []
    for f in sorted(env["audit"].glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            rows.append((rec["writer_id"], rec["segment_id"], rec["seq"], line, rec.get("request_id")))
    first, rest = [r for r in rows if r[2] < 200], [r for r in rows if r[2] >= 200]

    def insert(batch):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(schema_sql(table))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s)", batch)
    insert(first)
    try:
        h = {"authorization": f"Bearer {env['token']()}"}
        with client_for(env, PostgresStore(dsn, table), refresh_s=0) as c:
            part = json.loads(c.get("/export.json", headers=h).text)["records"]
            assert len(part) == sum(1 for r in first if json.loads(r[3]).get("kind") == "decision")
            insert(rest)  # appended rows are indexed on the next look
            exported = json.loads(c.get("/export.json?subject=bob", headers=h).text)["records"]
            want = sorted(json.loads(r[3])["request_id"] for r in rows
                          if json.loads(r[3]).get("kind") == "decision" and json.loads(r[3])["identity"]["subject"] == "bob")
            assert sorted(e["request_id"] for e in exported) == want
            page = c.get(f"/request/{want[0]}", headers=h).text
            assert 'record-state">verified' in page
            assert c.get("/", headers=h).text.count('class="badge verified"') == 2
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
            conn.execute(f"DROP FUNCTION IF EXISTS {table}_append_only() CASCADE")


def test_period_report_states_the_verification_of_each_decision(env):
    h = {"authorization": f"Bearer {env['token']()}"}
    victim = sorted(env["audit"].glob("*.jsonl"))[0]
    lines = victim.read_bytes().split(b"\n")
    cut = len(lines) // 2
    target = next(n for n in range(cut, len(lines)) if b'"kind":"decision"' in lines[n - 1])
    lines[target - 1] = lines[target - 1].replace(b'"subject":"', b'"subject":"z', 1)
    victim.write_bytes(b"\n".join(lines))
    with client_for(env) as c:
        page = c.get("/report?decision=permit", headers=h).text
    assert f"at record {target}:" in page
    assert 'class="badge verified">verified' in page and 'class="badge broken">broken' in page
    rows = [r for r in page.split("<tr>") if f"{victim.name} #" in r]
    for r in rows:
        line = int(r.split(f"{victim.name} #")[1].split("<")[0])
        assert ("broken" in r) == (line >= target), r


def test_capture_opens_only_with_the_key_and_the_access_is_recorded(env):
    key = bytes(range(32))
    audit = env["tmp"] / "captured"
    write_sample_store(audit, requests=20, start_ms=START, span_ms=HOUR, capture_key=key)
    h = {"authorization": f"Bearer {env['token']()}"}
    with client_for(env, FileStore(audit)) as c:
        rid = json.loads(c.get("/export.json?decision=permit", headers=h).text)["records"][0]["request_id"]
        page = c.get(f"/request/{rid}", headers=h).text
        assert "decrypt-form" in page and f"prompt of {rid}" not in page  # ciphertext only, until asked
        wrong = c.post(f"/request/{rid}/decrypt", headers=h, data={"key": bytes(32).hex()})
        assert wrong.status_code == 400 and "does not open with this key" in wrong.text
        assert f"prompt of {rid}" not in wrong.text
        assert c.post(f"/request/{rid}/decrypt", headers=h, data={"key": "short"}).status_code == 400
        ok = c.post(f"/request/{rid}/decrypt", headers=h, files={"key_file": ("capture.key", key)})
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        assert f"prompt of {rid}" in ok.text and f"response to {rid}" in ok.text
        by_hex = c.post(f"/request/{rid}/decrypt", headers=h, data={"key": key.hex()})
        assert f"prompt of {rid}" in by_hex.text
    log = access(env)
    opened = [e for e in log if e.get("viewed", {}).get("decrypted_capture")]
    assert [e["viewed"]["decrypted_capture"] for e in opened] == [["decision", "outcome"]] * 2
    assert all(e["subject"] == "olivia" and e["viewed"]["capture_key_ids"] == ["legal-1", "legal-1"] for e in opened)
    text = (env["tmp"] / "access.jsonl").read_text()
    assert key.hex() not in text and "prompt of" not in text


def test_a_record_changed_under_the_index_is_read_again_from_the_store(env):
    h = {"authorization": f"Bearer {env['token']()}"}
    with client_for(env) as c:
        rid = json.loads(c.get("/export.json?subject=carol", headers=h).text)["records"][0]["request_id"]
        assert 'record-state">verified' in c.get(f"/request/{rid}", headers=h).text
        for f in env["audit"].glob("*.jsonl"):
            data = f.read_bytes()
            if rid.encode() in data:
                f.write_bytes(data.replace(b'"subject":"carol"', b'"subject":"carox"'))
        # At once (inside the index's refresh interval): the page shows what the store now holds.
        page = c.get(f"/request/{rid}", headers=h).text
        assert "carox" in page and 'record-state">broken' in page


def test_the_witnesses_view_and_a_tail_removed_since_they_saw_it(env):
    import io as _io

    from ext_proc.cli.audit import run as audit_run

    audit, witness = env["tmp"] / "open-store", env["tmp"] / "witness"
    write_sample_store(audit, requests=40, start_ms=START, span_ms=HOUR, close=False)
    assert audit_run(["checkpoint", str(audit), "--out", str(witness)], out=_io.StringIO(), err=_io.StringIO()) == 0
    assert len(list(witness.glob("*.checkpoint"))) == 2
    h = {"authorization": f"Bearer {env['token']()}"}

    def console():
        store = FileStore(audit)
        c = Console(store, Index(env["tmp"] / "cache" / f"{uuid.uuid4().hex}.sqlite"),
                    AuditorAuth(identity_config(None, env["var"])), AccessLog(env["tmp"] / "access.jsonl"),
                    witnesses=[str(witness)])
        return TestClient(create_app(c))

    seg = sorted(audit.glob("*.jsonl"))[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    with console() as c:
        page = c.get("/", headers=h).text
    assert page.count('class="badge verified"') == 2 and 'class="badge broken"' not in page
    assert f"tree size {len(lines)}" in page and str(witness) in page
    seg.write_bytes(b"".join(lines[:-3]))   # the last three records removed: the chain alone cannot tell
    with console() as c:
        page = c.get("/", headers=h).text
    row = page.split(f'data-segment="{seg.name}"')[1].split("</tr>")[0]
    assert 'class="badge broken"' in row
