"""The audit chain: every kind of tampering is detected; canonical JSON matches RFC 8785."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import AuditUnavailable, load_or_create_signing_key, open_audit_log
from ext_proc.audit.verify import verify_dir

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(alphabet=st.characters(max_codepoint=127), max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_json_matches_rfc8785(obj):
    assert canonical_json(obj) == rfc8785.dumps(obj)


@pytest.mark.parametrize("bad", [1.5, 2**60, {"k": float("nan")}, {"\u00e9": 1}, object()])
def test_canonical_json_refuses_what_it_cannot_keep_canonical(bad):
    with pytest.raises((TypeError, ValueError)):
        canonical_json(bad)


def write_log(directory: Path, n: int = 20, writer: str = "w1", key: str = "k.pem") -> Path:
    async def go():
        log = open_audit_log(AuditConfig.from_dict({"dir": str(directory), "signing_key": str(directory.parent / key)}), writer_id=writer)
        await log.start()
        await asyncio.gather(*(log.commit({"kind": "decision", "request_id": f"r{i}", "decision": {"outcome": "permit"}})
                               for i in range(n)))
        await log.close()
        return log.sink.path
    return asyncio.run(go())


@pytest.fixture
def seg(tmp_path):
    d = tmp_path / "audit"
    path = write_log(d)
    assert verify_dir(d).ok
    return d, path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def put(path: Path, ls: list[bytes]) -> None:
    path.write_bytes(b"\n".join(ls) + b"\n")


def test_intact_log_verifies_with_a_closing_checkpoint(seg):
    d, path = seg
    rep = verify_dir(d)
    assert rep.ok and rep.records == 22  # genesis + 20 + checkpoint
    assert json.loads(lines(path)[-1])["kind"] == "checkpoint"


def test_byte_flip_in_any_field_is_detected(seg):
    d, path = seg
    original = lines(path)
    rec = json.loads(original[5])
    for field in ["request_id", "decision", "seq", "prev_hash", "hash", "signature", "committed_ms", "kind"]:
        tampered = dict(rec)
        v = tampered[field]
        tampered[field] = (v + 1) if isinstance(v, int) else ({"outcome": "deny"} if isinstance(v, dict) else
                                                              (v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1]))
        put(path, original[:5] + [json.dumps(tampered).encode()] + original[6:])
        rep = verify_dir(d)
        assert not rep.ok and f"{path.name}:6" in rep.problem, field


def test_deleted_swapped_and_truncated_records_are_detected(seg):
    d, path = seg
    original = lines(path)
    put(path, original[:4] + original[5:])
    assert "sequence" in verify_dir(d).problem
    put(path, original[:4] + [original[5], original[4]] + original[6:])
    assert not verify_dir(d).ok
    put(path, original[:-3])  # tail cut: the checkpoint is gone
    rep = verify_dir(d)
    assert rep.ok and any("no closing checkpoint" in w for w in rep.warnings)
    put(path, original[:-3] + [original[-1]])  # checkpoint kept, records before it removed
    assert not verify_dir(d).ok


def test_splice_from_another_segment_and_foreign_key_are_detected(seg, tmp_path):
    d, path = seg
    other_dir = tmp_path / "other"
    other = write_log(other_dir, writer="w2", key="k2.pem")
    original = lines(path)
    put(path, original[:5] + [lines(other)[5]] + original[6:])
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:6" in rep.problem and "another segment" in rep.problem, rep.problem
    # The same writer and key on a later segment (what a sink reopen writes): only the segment differs.
    same_key = write_log(tmp_path / "reopened", writer="w1", key="k.pem")
    put(path, original[:5] + [lines(same_key)[5]] + original[6:])
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:6" in rep.problem and "another segment" in rep.problem, rep.problem
    put(path, original)
    # A whole chain re-signed with a foreign key verifies on its own keys but not against a trust list.
    trusted = verify_dir(d).key_ids
    shutil.copy(other, d / other.name)
    assert verify_dir(d).ok
    rep = verify_dir(d, trusted_key_ids=trusted)
    assert not rep.ok and "untrusted key" in rep.problem


def test_signature_replaced_is_detected(seg):
    d, path = seg
    original = lines(path)
    a, b = json.loads(original[3]), json.loads(original[4])
    a["signature"] = b["signature"]
    put(path, original[:3] + [canonical_json(a)] + original[4:])
    assert "signature" in verify_dir(d).problem


def test_torn_final_write_is_attested_by_the_next_segment_not_mistaken_for_tampering(seg):
    d, path = seg
    with open(path, "ab") as f:
        f.write(b'{"kind":"decision","request_')  # a crash mid-write
    assert not verify_dir(d).ok  # unexplained torn tail
    write_log(d, n=2)  # the next process starts a new segment and attests the torn tail
    rep = verify_dir(d)
    assert rep.ok and any("torn final write" in w for w in rep.warnings)


def test_sink_failure_fails_closed(tmp_path):
    async def go():
        log = open_audit_log(AuditConfig.from_dict({"dir": str(tmp_path / "a"), "signing_key": str(tmp_path / "k.pem")}), writer_id="w")
        await log.start()
        await log.commit({"kind": "decision", "request_id": "ok"})

        def broken(lines):
            raise OSError("disk gone")
        log.sink.write_batch = broken
        with pytest.raises(AuditUnavailable):
            await log.commit({"kind": "decision", "request_id": "lost"})
        with pytest.raises(AuditUnavailable):
            await log.commit({"kind": "decision", "request_id": "after"})
        assert not log.ready
    asyncio.run(go())


def test_group_commit_batches_and_every_commit_is_durable_when_it_returns(tmp_path):
    async def go():
        log = open_audit_log(AuditConfig.from_dict({"dir": str(tmp_path / "a"), "signing_key": str(tmp_path / "k.pem")}), writer_id="w")
        await log.start()
        done = []

        async def one(i):
            rec = await log.commit({"kind": "decision", "request_id": f"r{i}"})
            # Durable means on disk now, before anything else happens.
            assert rec["hash"].encode() in log.sink.path.read_bytes()
            done.append(i)
        await asyncio.gather(*(one(i) for i in range(300)))
        assert len(done) == 300 and log.batches < 300
        await log.close()
    asyncio.run(go())


def test_records_committed_together_are_one_write_and_one_fsync_and_durable_when_it_returns(tmp_path):
    # A cache hit's decision and outcome (issue 22): one write + fsync for both, even when the
    # writer's batch limit would cut between them and other commits are queued around them.
    async def go():
        log = open_audit_log(AuditConfig.from_dict({**{"dir": str(tmp_path / "a")}, "signing_key": str(tmp_path / "k.pem")}), writer_id="w")
        log.max_batch = 1
        await log.start()
        writes: list[list[bytes]] = []
        real = log.sink.write_batch

        def counting(lines):
            writes.append(list(lines))
            real(lines)
        log.sink.write_batch = counting

        async def pair(i):
            decision, outcome = await log.commit_together([{"kind": "decision", "request_id": f"hit{i}"},
                                                           {"kind": "outcome", "request_id": f"hit{i}"}])
            on_disk = log.sink.path.read_bytes()
            assert decision["hash"].encode() in on_disk and outcome["hash"].encode() in on_disk
            assert outcome["seq"] == decision["seq"] + 1
            return decision, outcome
        results = await asyncio.gather(*(pair(i) for i in range(20)),
                                       *(log.commit({"kind": "decision", "request_id": f"other{i}"})
                                         for i in range(20)))
        for decision, outcome in results[:20]:
            both = [w for w in writes if any(decision["hash"].encode() in line for line in w)]
            assert len(both) == 1 and any(outcome["hash"].encode() in line for line in both[0])
        await log.close()
    asyncio.run(go())
    rep = verify_dir(tmp_path / "a")
    assert rep.ok, rep.problem


def test_records_committed_together_are_not_committed_when_the_write_fails(tmp_path):
    async def go():
        log = open_audit_log(AuditConfig.from_dict({**{"dir": str(tmp_path / "a")}, "signing_key": str(tmp_path / "k.pem")}), writer_id="w")
        await log.start()

        def broken(lines):
            raise OSError("disk gone")
        log.sink.write_batch = broken
        with pytest.raises(AuditUnavailable):
            await log.commit_together([{"kind": "decision", "request_id": "x"}, {"kind": "outcome", "request_id": "x"}])
        with pytest.raises(AuditUnavailable):
            await log.commit_together([{"kind": "decision", "request_id": "y"}])
        await log.close()
    asyncio.run(go())


def test_signing_key_is_private(tmp_path):
    load_or_create_signing_key(tmp_path / "k.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    w = ChainWriter(load_or_create_signing_key(tmp_path / "k.pem"), "w", "s")
    assert w.genesis(0)["seq"] == 0 and w.seal({"kind": "x"}, 1)["seq"] == 1


def _segments(d: Path):
    return [(f.name, f.read_bytes().splitlines(), b"") for f in sorted(d.glob("*.jsonl"))]


def test_a_reserialised_but_unaltered_log_fails_byte_exact_verification(seg):
    # Another serialisation of the same records (a SIEM round trip) is not what was signed: the
    # stored bytes are the evidence, so the first re-serialised line is reported.
    d, path = seg
    path.write_bytes(b"".join(json.dumps(json.loads(x), indent=None, sort_keys=False).encode() + b"\n"
                              for x in lines(path)))
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:1: not the canonical JSON" in rep.problem


def test_a_reserialised_and_altered_record_is_still_caught(seg):
    d, path = seg
    ls = lines(path)
    rec = json.loads(ls[4])
    rec["decision"]["outcome"] = "deny"
    ls[4] = json.dumps(rec).encode()
    path.write_bytes(b"\n".join(ls) + b"\n")
    rep = verify_dir(d)
    assert not rep.ok and ":5: not the canonical JSON" in rep.problem
    ls[4] = canonical_json(rec)
    path.write_bytes(b"\n".join(ls) + b"\n")
    rep = verify_dir(d)
    assert not rep.ok and rep.problem.endswith(":5: content does not match its hash (altered)")


@pytest.mark.parametrize("tamper", ["flip", "swap", "drop", "sig"])
def test_parallel_verification_reports_the_same_first_problem(tmp_path, tamper, monkeypatch):
    from ext_proc.audit import segments as segments_mod
    from ext_proc.audit import verify as verify_mod
    d = tmp_path / "audit"
    path = write_log(d, n=300)
    ls = lines(path)
    if tamper == "flip":
        ls[250] = ls[250].replace(b'"permit"', b'"permiT"')
    elif tamper == "swap":
        ls[100], ls[101] = ls[101], ls[100]
    elif tamper == "drop":
        del ls[42]
    else:
        other = json.loads(ls[7])
        rec = json.loads(ls[200])
        rec["signature"] = other["signature"]
        ls[200] = canonical_json(rec)
    path.write_bytes(b"\n".join(ls) + b"\n")
    sequential = verify_mod.verify_segments(_segments(d), jobs=1)
    monkeypatch.setattr(verify_mod, "PARALLEL_THRESHOLD_BYTES", 10)
    monkeypatch.setattr(segments_mod, "_MAX_CHUNK", 37)
    parallel = verify_mod.verify_segments(_segments(d), jobs=2)
    assert not sequential.ok
    assert (parallel.ok, parallel.problem, parallel.records) == (sequential.ok, sequential.problem, sequential.records)


def test_parallel_verification_of_an_intact_log(tmp_path, monkeypatch):
    from ext_proc.audit import segments as segments_mod
    from ext_proc.audit import verify as verify_mod
    d = tmp_path / "audit"
    write_log(d, n=120)
    monkeypatch.setattr(verify_mod, "PARALLEL_THRESHOLD_BYTES", 10)
    monkeypatch.setattr(segments_mod, "_MAX_CHUNK", 16)
    rep = verify_mod.verify_segments(_segments(d), jobs=2)
    assert rep.ok and rep.records == 122  # genesis + 120 + closing checkpoint


record_bodies = st.dictionaries(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=12).filter(lambda k: k not in ("hash", "signature")),
    json_values, max_size=12)


@settings(max_examples=300, deadline=None)
@given(record_bodies)
def test_the_line_serialised_once_is_the_canonical_json_of_the_sealed_record(body):
    import tempfile

    from ext_proc.audit.chain import record_hash
    from ext_proc.audit.log import load_or_create_signing_key
    key = _KEY.setdefault("k", load_or_create_signing_key(Path(tempfile.mkdtemp()) / "k.pem"))
    rec, line = ChainWriter(key, "w", "s").seal_line(body, 5)
    assert line == canonical_json(rec)
    assert rec["hash"] == record_hash(rec)


_KEY: dict = {}


# --- cases the mutation run found unpinned (docs/testing.md) -------------------------------------

def test_a_splice_is_named_whichever_segment_is_older(tmp_path):
    """Segment ids sort by creation time (then by a random suffix within one second); a record
    spliced in either direction between two segments of the same writer and key is named."""
    segs = [write_log(tmp_path / name, writer="w1", key="k.pem") for name in ("one", "two")]
    for target, donor in (segs, segs[::-1]):
        original = lines(target)
        put(target, original[:5] + [lines(donor)[5]] + original[6:])
        rep = verify_dir(target.parent)
        assert not rep.ok and f"{target.name}:6" in rep.problem and "another segment" in rep.problem, rep.problem
        put(target, original)


def test_a_segment_ending_in_any_record_but_a_checkpoint_is_flagged(seg):
    """A crashed writer's segment ends wherever it stopped, e.g. on an upstream attempt record (a
    kind that sorts before "checkpoint"): it verifies, with the missing checkpoint named."""
    d, path = seg
    original = lines(path)
    for kind in ("attempt", "outcome"):
        async def go(kind=kind):
            log = open_audit_log(AuditConfig.from_dict({"dir": str(d / kind), "signing_key": str(d.parent / "k.pem")}), writer_id="w1")
            await log.start()
            await log.commit({"kind": kind, "request_id": "r-last"})
            return log.sink.path   # not closed: no checkpoint, as after a crash
        crashed = asyncio.run(go())
        rep = verify_dir(d / kind)
        assert rep.ok and any(f"{crashed.name}: no closing checkpoint" in w for w in rep.warnings), (kind, rep.warnings)
    rep = verify_dir(d)
    assert rep.ok and not any("no closing checkpoint" in w for w in rep.warnings) and original == lines(path)


def test_an_empty_segment_file_is_named(seg):
    d, path = seg
    (d / "zz-empty.jsonl").write_bytes(b"")
    rep = verify_dir(d)
    # An emptied segment is a failure, named (issue 19: nothing to verify is not "OK").
    assert not rep.ok and "zz-empty.jsonl: empty segment" in rep.problem, rep.problem


def test_a_line_that_is_not_json_inside_a_segment_is_named(seg):
    d, path = seg
    original = lines(path)
    put(path, original[:5] + [b'{"kind": "decision", "request_id": '] + original[6:])
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:6" in rep.problem and "not valid JSON" in rep.problem, rep.problem


def test_key_id_is_the_documented_fingerprint(tmp_path):
    """docs/audit-record.md: key_id is the first 16 hex of SHA-256 of the Ed25519 public key, so
    an auditor can compute it from the genesis public key with any tool."""
    import base64
    import hashlib

    path = write_log(tmp_path / "audit", n=1)
    genesis = json.loads(lines(path)[0])
    raw = base64.b64decode(genesis["public_key"]) if "public_key" in genesis else None
    assert raw is not None and len(raw) == 32, sorted(genesis)
    assert genesis["key_id"] == hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("first_kind", ["genesis", "outcome"])
def test_the_first_record_is_named_for_what_is_wrong_with_it(seg, first_kind):
    """A genesis whose public key cannot be read, and a segment that opens with another kind of
    record, are two different findings (found by `make mutation`: the genesis-kind test compared
    with `<=` gave the second reason for a genesis record, `outcome` sorting after it the first)."""
    d, path = seg
    original = lines(path)
    first = json.loads(original[0])
    first["public_key"] = "not base64!"
    first["kind"] = first_kind
    put(path, [json.dumps(first).encode()] + original[1:])
    rep = verify_dir(d)
    want = "genesis public key unreadable" if first_kind == "genesis" else "does not start with a genesis record"
    assert not rep.ok and f"{path.name}:1" in rep.problem and want in rep.problem, rep.problem


def test_an_altered_record_is_named_as_not_matching_its_hash(seg):
    """A record whose content changed (still canonical JSON) is reported as such, whichever way
    its new hash sorts against the stored one (found by `make mutation`: `>` for `!=` let half of
    the alterations through to the signature check). Twenty records: a mutant passes 1 in 10^6."""
    from ext_proc.audit.canonical import canonical_json

    d, path = seg
    original = lines(path)
    for i in range(1, 21):
        rec = json.loads(original[i])
        rec["request_id"] = rec["request_id"] + "x"
        put(path, original[:i] + [canonical_json(rec)] + original[i + 1:])
        rep = verify_dir(d)
        assert not rep.ok and f"{path.name}:{i + 1}" in rep.problem, rep.problem
        assert "does not match its hash" in rep.problem, rep.problem
    put(path, original)


def test_the_segment_with_the_problem_is_marked_not_ok_in_the_report(seg):
    """The report's per-segment status (what `audit verify --json` prints) marks the tampered
    segment, not only the whole result (found by `make mutation`: a status left ok passed)."""
    d, path = seg
    original = lines(path)
    rec = json.loads(original[5])
    rec["seq"] += 1
    put(path, original[:5] + [json.dumps(rec).encode()] + original[6:])
    rep = verify_dir(d)
    [status] = [s for s in rep.segment_status if s.name == path.name]
    assert not rep.ok and not status.ok and status.problem is not None


@pytest.mark.parametrize("blank", [b"", b"\r"])
def test_a_blank_line_inside_a_segment_is_named_as_such(seg, blank):
    """Found by `make mutation`: a blank line reported as "not valid JSON" passed every test."""
    d, path = seg
    original = lines(path)
    put(path, original[:5] + [blank] + original[5:])
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:6" in rep.problem and "blank line" in rep.problem, rep.problem


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_segment_refused_at_its_genesis_is_marked_not_ok_in_the_report(tmp_path, jobs, monkeypatch):
    """A segment signed by a key the auditor does not trust: its own status in the report (what
    `audit verify --json` prints) is not ok, in the parallel path as in the sequential one (found
    by `make mutation`: a status left ok with its problem attached passed every test)."""
    from ext_proc.audit import verify as verify_mod
    d = tmp_path / "audit"
    path = write_log(d, n=30)
    monkeypatch.setattr(verify_mod, "PARALLEL_THRESHOLD_BYTES", 10)
    rep = verify_dir(d, trusted_key_ids={"not-this-key"}, jobs=jobs)
    [status] = [s for s in rep.segment_status if s.name == path.name]
    assert not rep.ok and "untrusted key" in rep.problem
    assert not status.ok and status.problem is not None


def _blocked_log(tmp_path):
    """A file-sink log whose writer holds each batch until `gate` is set, failing it while
    `fail` is set."""
    import threading

    log = open_audit_log(AuditConfig.from_dict({"dir": str(tmp_path / "a"), "signing_key": str(tmp_path / "k.pem")}),
                         writer_id="w")
    gate, fail, taken = threading.Event(), threading.Event(), threading.Event()
    real = log.sink.write_batch

    def held(lines):
        taken.set()
        gate.wait(10)
        if fail.is_set():
            raise OSError("disk gone")
        real(lines)
    return log, held, gate, fail, taken


def test_every_commit_queued_behind_a_failed_write_fails_and_none_waits_forever(tmp_path):
    async def go():
        log, held, gate, fail, taken = _blocked_log(tmp_path)
        await log.start()
        log.sink.write_batch = held
        first = asyncio.ensure_future(log.commit({"kind": "decision", "request_id": "in-flight"}))
        await asyncio.to_thread(taken.wait, 5)            # the writer holds it
        behind = [asyncio.ensure_future(log.commit_together([{"kind": "decision", "request_id": f"b{i}"},
                                                             {"kind": "outcome", "request_id": f"b{i}"}]))
                  for i in range(3)]
        await asyncio.sleep(0)
        fail.set()
        gate.set()
        for fut in [first, *behind]:
            with pytest.raises(AuditUnavailable):
                await asyncio.wait_for(fut, 5)
        # A commit that passed its check just before the writer failed (the race the writer
        # closes by failing whatever reaches its queue after the failure, until close).
        failed, log._failed = log._failed, None
        _records, durable = log.begin_together([{"kind": "decision", "request_id": "raced"}])
        log._failed = failed
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(durable, 5)
        await asyncio.wait_for(log.close(), 5)
    asyncio.run(go())


def test_the_queue_bound_counts_records_not_yet_durable_and_frees_as_they_become_durable(tmp_path):
    async def go():
        log, held, gate, fail, taken = _blocked_log(tmp_path)
        log.max_queue = 3
        await log.start()
        log.sink.write_batch = held
        first = asyncio.ensure_future(log.commit({"kind": "decision", "request_id": "in-flight"}))
        await asyncio.to_thread(taken.wait, 5)
        pair = asyncio.ensure_future(log.commit_together([{"kind": "decision", "request_id": "p"},
                                                          {"kind": "outcome", "request_id": "p"}]))
        await asyncio.sleep(0)
        with pytest.raises(AuditUnavailable, match="queue full"):
            await log.commit({"kind": "decision", "request_id": "one too many"})
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, pair), 5)
        # Durable records no longer count: the log takes commits again, as many as the bound.
        for i in range(3):
            await asyncio.wait_for(log.commit({"kind": "decision", "request_id": f"again{i}"}), 5)
        await log.close()
    asyncio.run(go())


# --- Survivors of the 02:48 `make mutation` run (docs/testing.md) -------------------------------

def test_a_signature_with_characters_outside_base64_does_not_verify(seg):
    """The signature field is read as strict base64: the same signature with a character base64
    does not have inserted is not the signed form, and does not verify (a lenient decoder drops
    it, and two different stored lines would verify as one record)."""
    d, path = seg
    original = lines(path)
    for junk in ("!", " ", "\n", "*"):
        rec = json.loads(original[4])
        rec["signature"] = rec["signature"][:10] + junk + rec["signature"][10:]
        put(path, original[:4] + [canonical_json(rec)] + original[5:])
        rep = verify_dir(d)
        assert not rep.ok and f"{path.name}:5" in rep.problem and "signature" in rep.problem, (junk, rep.problem)
    put(path, original)
    assert verify_dir(d).ok


def test_a_torn_tail_not_attested_is_named_at_the_line_after_the_last_record(seg):
    d, path = seg
    n = len(lines(path))
    with open(path, "ab") as f:
        f.write(b'{"kind":"decision","request_')
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}:{n + 1}: torn" in rep.problem, rep.problem


def test_an_untrusted_key_is_named_at_the_genesis_line(seg):
    d, path = seg
    rep = verify_dir(d, trusted_key_ids={"not-this-key"})
    assert rep.problem.startswith(f"{path.name}:1: segment signed by untrusted key"), rep.problem


def _crashed(path: Path, keep: int) -> list[bytes]:
    """The segment as a crash leaves it: its first `keep` lines, no closing checkpoint."""
    original = lines(path)
    put(path, original[:keep])
    return original


def test_a_crashed_segment_truncated_after_a_later_genesis_attested_it_fails(seg):
    """A later genesis attests a crashed segment's record count and last hash: removing records
    from its end afterwards is a truncation, not another crash (docs/audit-verify.md, 4)."""
    d, path = seg
    _crashed(path, 15)
    write_log(d, n=2)                      # the restart attests 15 records
    assert verify_dir(d).ok
    put(path, lines(path)[:12])
    rep = verify_dir(d)
    assert not rep.ok and f"{path.name}: truncated: a later genesis attests 15 records, the segment holds 12" \
        in rep.problem, rep.problem


def test_a_segment_named_by_a_later_genesis_but_removed_is_a_gap(seg):
    d, path = seg
    write_log(d, n=2)                      # attests the segment before it (the newest)
    assert verify_dir(d).ok
    path.unlink()
    rep = verify_dir(d)
    assert not rep.ok and f"gap: segment {path.name} is named by a later genesis but missing" in rep.problem, rep.problem


def test_a_segment_that_grew_after_a_later_genesis_attested_it_verifies(tmp_path):
    """Two writers on one directory: the second one's genesis attests the first one's segment,
    still being written, at its count then. That segment goes on growing and is closed: more
    records than attested is not a truncation (the attested record is still in its place)."""
    d = tmp_path / "audit"

    async def go():
        def opened(writer: str):
            return open_audit_log(AuditConfig.from_dict({"dir": str(d), "signing_key": str(tmp_path / "k.pem")}),
                                  writer_id=writer)
        first = opened("w1")
        await first.start()
        for i in range(3):
            await first.commit({"kind": "decision", "request_id": f"a{i}"})
        second = opened("w2")
        await second.start()              # its genesis attests w1's open segment at 4 records
        for i in range(3):
            await first.commit({"kind": "decision", "request_id": f"b{i}"})
            await second.commit({"kind": "decision", "request_id": f"c{i}"})
        await first.close()
        await second.close()
        return first.sink.path, second.sink.path
    a, b = asyncio.run(go())
    assert a != b
    claims = json.loads(lines(b)[0])["predecessors"]
    assert {"file": a.name, "records": 4} == {k: v for k, v in claims[0].items() if k != "last_hash"}, claims
    rep = verify_dir(d)
    assert rep.ok, rep.problem
