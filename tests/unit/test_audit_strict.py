"""Byte-exact verification and nothing-to-verify: every way of changing what an auditor is handed
that a lenient verifier let through (issue 19) fails with the segment, the line and the reason."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
import pytest

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import open_audit_log
from ext_proc.audit.verify import verify_dir, verify_store
from tests.unit.test_audit_chain import lines, put, write_log


@pytest.fixture
def seg(tmp_path):
    d = tmp_path / "audit"
    path = write_log(d, n=10)
    assert verify_dir(d).ok
    return d, path


def _forged_first_wins(line: bytes) -> bytes:
    # The forgery: a decision member in front of the original record. A last-wins parser
    # sees the original; a first-wins reader (some SIEMs, jq in some modes) sees the forgery.
    return b'{"decision":{"outcome":"permit","code":"FORGED"},' + line[1:]


TAMPERS = {
    "duplicate key (first-wins forgery)": (_forged_first_wins, "duplicate key 'decision'"),
    "reformatted with spaces": (lambda x: json.dumps(json.loads(x), sort_keys=True).encode(), "not the canonical JSON"),
    "keys reordered": (lambda x: json.dumps(dict(reversed(list(json.loads(x).items())))).encode().replace(b", ", b",").replace(b": ", b":"),
                       "not the canonical JSON"),
    "unicode escape": (lambda x: x.replace(b'"decision"', b'"d\\u0065cision"', 1), "not the canonical JSON"),
    "CRLF line ending": (lambda x: x + b"\r", "CRLF line ending"),
    "trailing space": (lambda x: x + b" ", "not the canonical JSON"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_a_line_that_is_not_the_signed_bytes_fails_with_line_and_reason(seg, kind):
    d, path = seg
    change, reason = TAMPERS[kind]
    ls = lines(path)
    ls[4] = change(ls[4])
    put(path, ls)
    rep = verify_dir(d)
    assert not rep.ok
    assert rep.first.line == 5 and rep.first.segment == path.name
    assert reason in rep.first.reason, rep.problem


def test_the_forged_line_still_carries_a_valid_hash_and_signature(seg):
    # What made the forgery dangerous: parsed last-wins, the record is intact and signed.
    d, path = seg
    original = lines(path)[4]
    forged = json.loads(_forged_first_wins(original))
    assert canonical_json(forged) == original


@pytest.mark.parametrize("where", ["middle", "end", "start"])
def test_a_blank_line_fails(seg, where):
    d, path = seg
    ls = lines(path)
    at = {"middle": 3, "end": len(ls), "start": 0}[where]
    ls.insert(at, b"")
    put(path, ls)
    rep = verify_dir(d)
    assert not rep.ok and rep.first.line == at + 1
    assert "blank line" in rep.first.reason or "not valid JSON" in rep.first.reason


def test_crlf_throughout_fails_at_the_first_line(seg):
    d, path = seg
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    rep = verify_dir(d)
    assert not rep.ok and rep.first.line == 1 and "CRLF" in rep.first.reason


def test_nothing_to_verify_fails(tmp_path):
    missing = verify_store(str(tmp_path / "nope"))
    assert not missing.ok and "not found" in missing.problem
    (tmp_path / "empty").mkdir()
    empty = verify_store(str(tmp_path / "empty"))
    assert not empty.ok and "nothing to verify" in empty.problem


def test_an_emptied_segment_fails(seg):
    d, path = seg
    write_log(d, n=3)  # a second, later segment
    path.write_bytes(b"")
    rep = verify_dir(d)
    assert not rep.ok and rep.first.segment == path.name and "empty segment" in rep.first.reason


def test_a_segment_removed_between_two_others_is_a_gap(tmp_path):
    d = tmp_path / "audit"
    first = write_log(d, n=3)
    middle = write_log(d, n=3)
    write_log(d, n=3)
    assert verify_dir(d).ok
    middle.unlink()
    rep = verify_dir(d)
    assert not rep.ok and f"gap: segment {middle.name}" in rep.problem
    assert first.exists()


def test_a_crashed_segment_truncated_later_is_not_mistaken_for_the_crash(tmp_path):
    d = tmp_path / "audit"
    crashed = write_log(d, n=8)
    ls = lines(crashed)
    put(crashed, ls[:-1])          # the closing checkpoint never written: a crash
    write_log(d, n=2)              # the restart attests where the crashed segment ended
    rep = verify_dir(d)
    assert rep.ok and any("attested by a later genesis" in w and crashed.name in w for w in rep.warnings)
    put(crashed, ls[:-4])          # later, three more records removed from its end
    rep = verify_dir(d)
    assert not rep.ok and "truncated: a later genesis attests 9 records, the segment holds 6" in rep.problem


def test_an_unattested_unclosed_segment_is_a_warning_that_names_truncation(seg):
    d, path = seg
    put(path, lines(path)[:-3])
    rep = verify_dir(d)
    assert rep.ok
    assert any("records were removed from the end" in w for w in rep.warnings)


def test_an_empty_segment_left_by_a_crash_before_genesis_is_attested(tmp_path):
    d = tmp_path / "audit"
    d.mkdir()
    (d / "w0-20000101T000000Z-00000000.jsonl").write_bytes(b"")
    write_log(d, n=2)
    rep = verify_dir(d)
    assert rep.ok and any("empty segment" in w for w in rep.warnings)


def test_per_segment_status_names_each_segment_and_its_first_problem(tmp_path):
    d = tmp_path / "audit"
    a = write_log(d, n=4)
    b = write_log(d, n=4)
    ls = lines(b)
    ls[2] = ls[2].replace(b'"permit"', b'"deny"')
    put(b, ls)
    rep = verify_dir(d)
    status = {s.name: s for s in rep.segment_status}
    assert status[a.name].ok and status[a.name].closed and status[a.name].records == 6
    assert not status[b.name].ok and status[b.name].problem.line == 3
    assert rep.to_json()["first_problem"]["line"] == 3


DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.postgres
def test_a_reformatted_postgres_row_fails_with_its_position(tmp_path):
    table = f"lg_audit_s{uuid.uuid4().hex[:10]}"

    async def go():
        log = open_audit_log(AuditConfig.from_dict({"sink": "postgres", "dsn": DSN, "table": table, "signing_key": str(tmp_path / "k.pem")}), writer_id="pgs")
        await log.start()
        for i in range(5):
            await log.commit({"kind": "decision", "request_id": f"r{i}", "decision": {"outcome": "permit"}})
        await log.close()
    try:
        asyncio.run(go())
        assert verify_store(DSN, table=table).ok
        # The same CLI for a table: the store first, --table to name it.
        from ext_proc.cli.audit import run
        assert run(["show", DSN, "r2", "--table", table]) == 0
        assert run(["show", DSN, "r9", "--table", table]) == 1
        assert run(["verify", DSN, "--table", table]) == 0
        assert run(["verify", DSN, "--table", "lg_no_such_table"]) == 1
        with psycopg.connect(DSN, autocommit=True) as c:
            c.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_change")
            row = c.execute(f"SELECT record FROM {table} WHERE seq = 2").fetchone()[0]
            forged = '{"decision":{"outcome":"permit","code":"FORGED"},' + row[1:]
            c.execute(f"UPDATE {table} SET record = %s WHERE seq = 2", (forged,))
        rep = verify_store(DSN, table=table)
        assert not rep.ok and rep.first.line == 3 and "duplicate key 'decision'" in rep.first.reason
        assert not verify_store(DSN, table="lg_no_such_table").ok
    finally:
        with psycopg.connect(DSN, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
            c.execute(f"DROP FUNCTION IF EXISTS {table}_append_only() CASCADE")


def test_a_later_restart_cannot_launder_an_earlier_truncation(tmp_path):
    d = tmp_path / "audit"
    crashed = write_log(d, n=8)
    ls = lines(crashed)
    put(crashed, ls[:-1])          # crash: no closing checkpoint
    write_log(d, n=2)              # restart 1 attests 9 records
    put(crashed, ls[:-4])          # truncated
    write_log(d, n=2)              # restart 2 attests the 6 that are left
    rep = verify_dir(d)
    assert not rep.ok and "a later genesis attests 9 records, the segment holds 6" in rep.problem


def test_only_a_verified_genesis_attests(tmp_path):
    d = tmp_path / "audit"
    crashed = write_log(d, n=8)
    ls = lines(crashed)
    put(crashed, ls[:-1])
    later = write_log(d, n=2)
    assert verify_dir(d).ok
    # The attesting segment is itself broken: its claims no longer vouch for the crash.
    other = lines(later)
    other[2] = other[2].replace(b'"permit"', b'"deny"')
    put(later, other)
    rep = verify_dir(d)
    status = {s.name: s for s in rep.segment_status}
    assert not status[later.name].ok
    assert any("no later genesis attests its end" in w for w in status[crashed.name].warnings)


def test_a_malformed_torn_tail_attestation_is_a_failed_genesis_not_a_crash(tmp_path):
    # Claims are read from every genesis before any is verified; a claim whose file is a list
    # (unhashable) used to raise TypeError out of the verifier. Now it never attests anything and
    # the altered genesis fails like any altered record.
    d = tmp_path / "audit"
    crashed = write_log(d, n=4)
    with open(crashed, "ab") as f:
        f.write(b'{"kind":"decision","request_')
    later = write_log(d, n=2)
    assert verify_dir(d).ok
    ls = lines(later)
    genesis = json.loads(ls[0])
    genesis["recovered_torn_tails"][0]["file"] = [crashed.name]
    ls[0] = canonical_json(genesis)
    put(later, ls)
    rep = verify_dir(d)
    status = {s.name: s for s in rep.segment_status}
    assert not status[later.name].ok and "altered" in status[later.name].problem.reason
    assert not status[crashed.name].ok and "not attested" in status[crashed.name].problem.reason
