"""The console's index and its verdicts: built incrementally from the records, rebuilt when a
segment changes other than by growing, filters that agree with a scan of the records, and chain
status per segment from the existing verifier."""

from __future__ import annotations

import json
import shutil

from ext_proc.console.chainstatus import ChainStatus, record_verdict
from ext_proc.console.evidence import verify_store
from ext_proc.console.index import Index, Query, extract
from ext_proc.console.sample_store import write_sample_store
from ext_proc.console.store import FileStore

START = 1_795_900_000_000
HOUR = 3_600_000


def records(directory):
    out = []
    for f in sorted(directory.glob("*.jsonl")):
        for n, line in enumerate(f.read_bytes().splitlines(), start=1):
            out.append((f.name, n, json.loads(line)))
    return out


def brute(directory, pred):
    return sorted(r["request_id"] for _f, _n, r in records(directory) if r.get("kind") == "decision" and pred(r))


def found(index, q):
    return sorted(r["request_id"] for r in index.iter_search(q))


def test_filters_agree_with_a_scan_of_the_records(tmp_path):
    audit = tmp_path / "audit"
    write_sample_store(audit, requests=600, start_ms=START, span_ms=10 * HOUR)
    index = Index(tmp_path / "cache" / "i.sqlite")
    assert index.refresh(FileStore(audit)) == len(records(audit))
    every = brute(audit, lambda r: True)
    assert found(index, Query({})) == every and len(every) == 600
    cases = [
        ({"subject": "alice"}, lambda r: r["identity"]["subject"] == "alice"),
        ({"decision": "deny"}, lambda r: r["decision"]["outcome"] == "deny"),
        ({"label": "pii.email"}, lambda r: "pii.email" in r["classification"]["summary"]),
        ({"role": "admin"}, lambda r: "admin" in r["identity"]["roles"]),
        ({"rule": "redact-pii"}, lambda r: any(m["rule"] == "redact-pii" for m in r["decision"]["matched"])),
        ({"route": "/v1/messages", "tenant": "acme"},
         lambda r: r["route"]["path"] == "/v1/messages" and r["identity"]["tenant"] == "acme"),
        ({"provider": "gemini", "model": "gemini-2.0-flash"}, lambda r: r["provider"] == "gemini"),
        ({"policy": "b" * 64}, lambda r: r["policy"]["version"] == "b" * 64),
        ({"rule": "redact-pii", "label": "pii.email", "tenant": "globex"},
         lambda r: r["decision"]["matched"][0]["rule"] == "redact-pii" and "pii.email" in r["classification"]["summary"]
         and r["identity"]["tenant"] == "globex"),
        ({"label": "pii.phone", "role": "support"},
         lambda r: "pii.phone" in r["classification"]["summary"] and "support" in r["identity"]["roles"]),
    ]
    for filters, pred in cases:
        want = brute(audit, pred)
        assert 0 < len(want) < 600, filters
        assert found(index, Query(filters)) == want, filters
        assert index.count(Query(filters)) == len(want)
    window = Query({}, START + 2 * HOUR, START + 3 * HOUR)
    assert found(index, window) == brute(audit, lambda r: START + 2 * HOUR <= r["timestamp_ms"] < START + 3 * HOUR)
    labelled = Query({"label": "pii.iban"}, START + 2 * HOUR, START + 6 * HOUR)
    want = brute(audit, lambda r: START + 2 * HOUR <= r["timestamp_ms"] < START + 6 * HOUR
                 and "pii.iban" in r["classification"]["summary"])
    assert want and found(index, labelled) == want and index.count(labelled) == len(want)
    assert dict(index.counts_by("outcome", labelled)) == {
        o: n for o in ("permit", "redact", "deny", "observe")
        if (n := len(brute(audit, lambda r: START + 2 * HOUR <= r["timestamp_ms"] < START + 6 * HOUR
                           and "pii.iban" in r["classification"]["summary"] and r["decision"]["outcome"] == o)))}  # noqa: B023 - called at once
    # Pages are disjoint and cover the set, newest first.
    pages = [index.search(Query({"decision": "deny"}), limit=10, offset=o) for o in range(0, 200, 10)]
    ids = [r["request_id"] for p in pages for r in p]
    assert sorted(ids) == brute(audit, lambda r: r["decision"]["outcome"] == "deny")
    ts = [r["ts_ms"] for p in pages for r in p]
    assert ts == sorted(ts, reverse=True)


def test_index_grows_with_the_store_and_rebuilds_a_rewritten_segment(tmp_path):
    audit = tmp_path / "audit"
    paths = write_sample_store(audit, requests=50, start_ms=START, span_ms=HOUR, close=False)
    store = FileStore(audit)
    index = Index(tmp_path / "i.sqlite")
    first = index.refresh(store)
    assert index.refresh(store) == 0  # nothing new
    # Appended records (and a torn, half-written line that must wait) are picked up incrementally.
    other = tmp_path / "more"
    write_sample_store(other, requests=80, start_ms=START, span_ms=HOUR, close=False)
    extra = (other / paths[0].name).read_bytes().splitlines(keepends=True)[len(paths[0].read_bytes().splitlines()):]
    with open(paths[0], "ab") as fh:
        fh.write(b"".join(extra) + b'{"kind":"deci')
    assert index.refresh(store) == len(extra)
    assert index.total() == first + len(extra)
    # A segment edited in place (same size) is indexed again from its records.
    data = paths[1].read_bytes()
    tampered = data.replace(b'"subject":"alice"', b'"subject":"alicf"', 1)
    assert tampered != data and len(tampered) == len(data)
    paths[1].write_bytes(tampered)
    index.refresh(store)
    assert found(index, Query({"subject": "alicf"}))
    # Rebuilt from scratch, the index says the same.
    fresh = Index(tmp_path / "j.sqlite")
    fresh.refresh(store)
    assert found(fresh, Query({})) == found(index, Query({}))


def test_chain_status_per_segment_and_per_record(tmp_path):
    audit = tmp_path / "audit"
    write_sample_store(audit, requests=120, start_ms=START, span_ms=HOUR)
    status = verify_store(FileStore(audit).parsed())
    assert [s.state for s in status.segments.values()] == ["verified", "verified"]
    bad = tmp_path / "bad"
    shutil.copytree(audit, bad)
    victim = sorted(bad.glob("*.jsonl"))[1]
    lines = victim.read_bytes().split(b"\n")
    target = next(n for n in range(15, len(lines)) if b'"kind":"decision"' in lines[n - 1])
    edited = lines[target - 1].replace(b'"tenant":"', b'"tenant":"x', 1)  # one changed value
    assert edited != lines[target - 1]
    lines[target - 1] = edited
    victim.write_bytes(b"\n".join(lines))
    status = verify_store(FileStore(bad).parsed())
    good, broken = status.segments.values()
    assert good.state == "verified"
    assert broken.state == "broken" and broken.broken_line == target and broken.problem

    store = FileStore(bad)
    index = Index(tmp_path / "i.sqlite")
    index.refresh(store)
    chain = ChainStatus(store)
    st = chain.current(10)
    assert st[1] and st[0].segments[victim.name].broken_line == target

    def verdict(line):
        row = index.record_at(victim.name, line)
        raw = store.read_at(victim.name, row["offset"], row["length"])
        prev = index.record_at(victim.name, line - 1)
        return record_verdict(st[0], True, index.segment(victim.name), line, raw, json.loads(raw),
                              prev["hash"], index.next_checkpoint(victim.name, line))

    assert verdict(target - 1).state == "verified"
    at = verdict(target)
    assert at.state == "broken" and at.hash_ok is False and "breaks at this record" in at.detail
    assert verdict(target + 1).state == "broken"  # after a break nothing is proven
    ok = verdict(5)
    assert ok.signature_ok and ok.link_ok and ok.checkpoint_line == index.segment(victim.name)["next_line"] - 1


def test_extract_takes_labels_rules_and_roles_never_text():
    rec = {"kind": "decision", "request_id": "r1", "timestamp_ms": 5,
           "identity": {"subject": "s", "tenant": "t", "roles": ["a", "b"]},
           "route": {"path": "/v1/x"}, "decision": {"outcome": "deny", "matched": [{"rule": "r"}], "status": 403},
           "classification": {"summary": {"pii.email": {"count": 1}}, "findings": [{"label": "pii.phone"}]},
           "policy": {"version": "v"}, "provider": "openai", "model_routed": "m"}
    fields, tags = extract(rec)
    assert fields["outcome"] == "deny" and fields["status"] == 403 and fields["route"] == "/v1/x"
    assert tags == [("label", "pii.email"), ("label", "pii.phone"), ("role", "a"), ("role", "b"), ("rule", "r")]


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    from ext_proc.console.app import _csv_cell

    assert _csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _csv_cell("@SUM(A1)") == "'@SUM(A1)" and _csv_cell("-1") == "'-1"
    assert _csv_cell("alice") == "alice" and _csv_cell(3) == 3 and _csv_cell(None) is None


def test_an_existing_index_is_reopened_and_kept(tmp_path):
    audit = tmp_path / "audit"
    write_sample_store(audit, requests=30, start_ms=START, span_ms=HOUR)
    index = Index(tmp_path / "i.sqlite")
    n = index.refresh(FileStore(audit))
    again = Index(tmp_path / "i.sqlite")
    assert again.total() == n and again.refresh(FileStore(audit)) == 0


def test_console_binds_loopback_unless_told_and_keeps_its_index_out_of_the_store(tmp_path):
    import pytest

    from ext_proc.cli.console import build_console, build_parser, is_loopback, parse_listen, run

    assert parse_listen("127.0.0.1:8600") == ("127.0.0.1", 8600) and parse_listen("[::1]:9") == ("::1", 9)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    with pytest.raises(SystemExit, match="loopback"):
        run(["--audit", str(tmp_path), "--listen", "0.0.0.0:8600"])
    audit = tmp_path / "audit"
    write_sample_store(audit, requests=2, start_ms=START, span_ms=HOUR)
    with pytest.raises(SystemExit, match="inside the audit store"):
        build_console(build_parser().parse_args(["--audit", str(audit), "--index", str(audit / "i.sqlite")]))
    assert not (audit / "i.sqlite").exists()


def test_an_index_of_another_layout_is_rebuilt_from_the_records(tmp_path):
    import sqlite3

    audit = tmp_path / "audit"
    write_sample_store(audit, requests=200, start_ms=START, span_ms=HOUR)
    old = sqlite3.connect(tmp_path / "i.sqlite")
    old.executescript("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT); INSERT INTO meta VALUES ('schema', '0');"
                      "CREATE TABLE tags (rid INTEGER, k TEXT, v TEXT); INSERT INTO tags VALUES (1, 'x', 'y');")
    old.close()
    index = Index(tmp_path / "i.sqlite")
    assert index.refresh(FileStore(audit)) == len(records(audit))
    want = brute(audit, lambda r: "pii.email" in r["classification"]["summary"])
    assert want and found(index, Query({"label": "pii.email"})) == want
