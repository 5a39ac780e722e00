"""The one place the console touches ext_proc.audit: reading segments and asking the existing
verifier about them. Kept thin so the verifier can change (stricter checks, checkpoints) without
the console following it around: only `verify_segments`, `verify_dir`'s segment reading,
`check_lines` and `read_segments` are used, and only the report's public fields."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ext_proc.audit.verify import check_lines, verify_segments

# VerifyReport.problem is "<segment name>:<line>: <what>".
_WHERE = re.compile(r"^(?P<name>.*):(?P<line>\d+): (?P<what>.*)$", re.S)


@dataclass
class SegmentStatus:
    name: str
    records: int
    state: str                 # "verified" | "broken" | "open" (verified, no closing checkpoint)
    broken_line: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def torn_tail_attested(self) -> bool:
        return any("attested" in n for n in self.notes)


@dataclass
class WitnessView:
    """What a witness holds for one segment: the tree size it last saw and where it came from."""
    source: str
    size: int


@dataclass
class StoreStatus:
    segments: dict[str, SegmentStatus]
    records: int
    key_ids: list[str]
    witnesses: dict[str, list[WitnessView]] = field(default_factory=dict)   # segment name -> views
    witness_error: str | None = None

    @property
    def ok(self) -> bool:
        return all(s.state != "broken" for s in self.segments.values())


def load_witness_checkpoints(specs: list[str], table: str | None = None) -> list:
    """Every checkpoint the witnesses (directories or postgresql:// DSNs) hold."""
    from ext_proc.audit.witness import load_witness

    out = []
    for spec in specs:
        out += load_witness(spec, table)
    return out


def verify_store_with_witnesses(parsed: list[tuple[str, list[bytes], bytes]], specs: list[str],
                                table: str | None = None) -> StoreStatus:
    """The verdict with the witnesses' checkpoints: the verifier proves (consistency proofs) that
    each segment still extends what a witness saw, so a tail removed since fails."""
    if not specs:
        return verify_store(parsed)
    try:
        checkpoints = load_witness_checkpoints(specs, table)
    except Exception as exc:  # noqa: BLE001 - an unreadable witness is shown, never ignored silently
        status = verify_store(parsed)
        status.witness_error = f"witness unreadable: {exc}"
        return status
    from ext_proc.audit.segments import lines_segment
    from ext_proc.audit.verify import verify_store_segments

    rep = verify_store_segments([lines_segment(n, ls, t) for n, ls, t in parsed], jobs=1, checkpoints=checkpoints)
    status = _from_segment_status(rep, parsed)
    by_id = {(st.writer_id, st.segment_id): st.name for st in rep.segment_status}
    for cp in checkpoints:
        name = by_id.get((cp.writer_id, cp.segment_id))
        if name is not None:
            status.witnesses.setdefault(name, []).append(WitnessView(cp.source, cp.size))
    if not rep.ok and rep.first is not None and rep.first.line is None:
        status.witness_error = str(rep.first)   # e.g. a witnessed segment missing from the store
    return status


def verify_store(parsed: list[tuple[str, list[bytes], bytes]]) -> StoreStatus:
    """Per-segment status from the whole-store verifier: run it; when it stops at a broken
    segment, record where, set that segment aside and run it again over the rest, so every
    segment gets its own verdict (torn tails stay attested by the other segments' geneses)."""
    remaining = list(parsed)
    statuses: dict[str, SegmentStatus] = {}
    key_ids: set[str] = set()
    # One process (the console runs this in a child of its own): a pool inside it would outlive
    # a stopped console.
    rep = verify_segments(remaining, jobs=1)
    if getattr(rep, "segment_status", None):
        return _from_segment_status(rep, parsed)
    while True:   # a verifier that stops at the first problem: set that segment aside, go on
        key_ids |= set(rep.key_ids)
        if rep.ok:
            break
        m = _WHERE.match(rep.problem or "")
        if m is None or m["name"] not in {n for n, _l, _t in remaining}:
            # A report the console cannot place: every remaining segment is unproven.
            for name, lines, _t in remaining:
                statuses[name] = SegmentStatus(name, len(lines), "broken", None, rep.problem)
            remaining = []
            break
        name = m["name"]
        lines = next(lines for n, lines, _t in remaining if n == name)
        statuses[name] = SegmentStatus(name, len(lines), "broken", int(m["line"]), m["what"])
        remaining = [seg for seg in remaining if seg[0] != name]
        if not remaining:
            break
        rep = verify_segments(remaining, jobs=1)
    notes: dict[str, list[str]] = {}
    if remaining:
        for w in rep.warnings:
            seg, _sep, what = w.partition(": ")
            notes.setdefault(seg, []).append(what)
    for name, lines, _t in remaining:
        n = notes.get(name, [])
        state = "open" if any("no closing checkpoint" in x for x in n) else "verified"
        statuses[name] = SegmentStatus(name, len(lines), state, None, None, n)
    return StoreStatus({n: statuses[n] for n, _l, _t in parsed}, sum(len(lines) for _n, lines, _t in parsed),
                       sorted(key_ids))


def _from_segment_status(rep, parsed) -> StoreStatus:
    """A verifier that reports every segment's own status (ok, the first problem with its line,
    warnings, closed by a checkpoint) is read directly."""
    out: dict[str, SegmentStatus] = {}
    for st in rep.segment_status:
        notes = [w.removeprefix(f"{st.name}: ") for w in st.warnings]   # the row already names it
        if not st.ok:
            p = st.problem
            out[st.name] = SegmentStatus(st.name, st.records, "broken", getattr(p, "line", None),
                                         getattr(p, "reason", None) or str(p), notes)
        else:
            closed = getattr(st, "closed", True)
            out[st.name] = SegmentStatus(st.name, st.records, "verified" if closed else "open", None, None,
                                         notes or ([] if closed else ["no closing checkpoint (writer still running or crashed)"]))
    for name, lines, _t in parsed:
        out.setdefault(name, SegmentStatus(name, len(lines), "broken", None, rep.problem or "not verified"))
    return StoreStatus({n: out[n] for n, _l, _t in parsed}, sum(len(lines) for _n, lines, _t in parsed),
                       sorted(rep.key_ids))


def record_seal_checks(public_key: bytes, line: bytes) -> tuple[bool, bool, str | None]:
    """(hash matches the content, signature verifies, the problem if any) for one stored line."""
    problem, _h, _summary = check_lines(public_key, [line])[0]
    if problem is None:
        return True, True, None
    # The checks run in order (form, hash, signature): only a bad signature means the hash held.
    return problem == "signature does not verify", False, problem


def split_torn(data: bytes) -> tuple[list[bytes], bytes]:
    """A segment file's complete lines and its torn trailing bytes, the way the verifier reads it."""
    torn = b""
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        torn, data = data[cut:], data[:cut]
    return data.splitlines(), torn


def replay_with(records, evaluate) -> dict:
    """The evidence issue's replay (ext_proc.audit.query.replay): each decision's recorded input
    evaluated again; `evaluate(version, input)` decides which policy answers."""
    from ext_proc.audit.query import replay

    return replay(records, evaluate)


def read_pg_segments(dsn: str, table: str):
    from ext_proc.audit.postgres import read_segments

    return read_segments(dsn, table)


def names(parsed: Iterable[tuple[str, list[bytes], bytes]]) -> list[str]:
    return [n for n, _l, _t in parsed]
