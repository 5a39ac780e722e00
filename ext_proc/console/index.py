"""The console's search index: a SQLite file in a cache directory, built incrementally from the
records and rebuilt from them whenever a segment changed in any way but growing.

It is a lookup aid, never evidence: it holds where each record is (segment, line, byte offset)
and the few fields the filters need. Every record a page shows is read again from the store, and
a record whose bytes no longer hash to what the index saw makes the index rebuild that segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS segments (
  name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, head TEXT,
  next_line INTEGER NOT NULL DEFAULT 1, next_offset INTEGER NOT NULL DEFAULT 0,
  writer_id TEXT, segment_id TEXT, public_key TEXT, key_id TEXT
);
CREATE TABLE IF NOT EXISTS records (
  id INTEGER PRIMARY KEY, segment TEXT NOT NULL, line INTEGER NOT NULL, offset INTEGER, length INTEGER,
  line_sha256 TEXT, kind TEXT, seq INTEGER, request_id TEXT, ts_ms INTEGER, hash TEXT,
  subject TEXT, tenant TEXT, route TEXT, outcome TEXT, code TEXT, provider TEXT, model TEXT,
  policy_version TEXT, status INTEGER, tree_size INTEGER
);
-- The multi-valued fields of decisions (roles, rules, labels), with the decision's time: a tag
-- filter reads one index range in time order.
CREATE TABLE IF NOT EXISTS tags (rid INTEGER NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL, ts_ms INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS records_where ON records (segment, line);
CREATE INDEX IF NOT EXISTS records_kind_ts ON records (kind, ts_ms);
CREATE INDEX IF NOT EXISTS records_request ON records (request_id);
-- (kind, column, ts_ms): a filtered count or page of decisions is a range of one index, and the
-- time range narrows it further without touching the table.
CREATE INDEX IF NOT EXISTS records_subject ON records (kind, subject, ts_ms);
CREATE INDEX IF NOT EXISTS records_tenant ON records (kind, tenant, ts_ms);
CREATE INDEX IF NOT EXISTS records_route ON records (kind, route, ts_ms);
CREATE INDEX IF NOT EXISTS records_outcome ON records (kind, outcome, ts_ms);
CREATE INDEX IF NOT EXISTS records_provider ON records (kind, provider, ts_ms);
CREATE INDEX IF NOT EXISTS records_model ON records (kind, model, ts_ms);
CREATE INDEX IF NOT EXISTS records_policy ON records (kind, policy_version, ts_ms);
CREATE INDEX IF NOT EXISTS tags_kv ON tags (k, v, ts_ms, rid);
CREATE INDEX IF NOT EXISTS tags_rid ON tags (rid, k, v);
"""

# The layout's own digest names it: any change to it rebuilds an existing index from the records.
SCHEMA_VERSION = hashlib.sha256(SCHEMA.encode()).hexdigest()[:16]

# Search filters: URL parameter -> (column or tag kind). Tags hold the multi-valued fields.
COLUMN_FILTERS = {"subject": "subject", "tenant": "tenant", "route": "route", "decision": "outcome",
                  "provider": "provider", "model": "model", "policy": "policy_version"}
TAG_FILTERS = {"role": "role", "rule": "rule", "label": "label"}
FILTERS = tuple(COLUMN_FILTERS) + tuple(TAG_FILTERS)


def default_index_path(store_label: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ledgergate" / "console"
    return base / (hashlib.sha256(store_label.encode()).hexdigest()[:16] + ".sqlite")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def extract(rec: dict) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The indexed fields of one record and its tags. Only fields the records hold for filtering:
    labels, rule ids, roles, never text."""
    kind = _str(rec.get("kind"))
    identity, route = _obj(rec.get("identity")), _obj(rec.get("route"))
    decision, policy = _obj(rec.get("decision")), _obj(rec.get("policy"))
    classification = _obj(rec.get("classification"))
    status = rec.get("status") if kind == "outcome" else decision.get("status")
    fields = {
        "kind": kind, "seq": rec.get("seq") if isinstance(rec.get("seq"), int) else None,
        "request_id": _str(rec.get("request_id")),
        "ts_ms": rec.get("timestamp_ms") if isinstance(rec.get("timestamp_ms"), int)
        else rec.get("committed_ms") if isinstance(rec.get("committed_ms"), int) else None,
        "hash": _str(rec.get("hash")), "subject": _str(identity.get("subject")),
        "tenant": _str(identity.get("tenant")), "route": _str(route.get("path")),
        "outcome": _str(decision.get("outcome")) if kind == "decision" else None,
        "code": _str(decision.get("code")) if kind == "decision" else _str(rec.get("error")),
        "provider": _str(rec.get("provider")),
        "model": _str(rec.get("model_routed")) or _str(rec.get("model_requested")) or _str(rec.get("model")),
        "policy_version": _str(policy.get("version")),
        "status": status if isinstance(status, int) and not isinstance(status, bool) else None,
        "tree_size": rec.get("tree_size") if isinstance(rec.get("tree_size"), int) else None,
    }
    tags: set[tuple[str, str]] = set()
    for r in identity.get("roles") or []:
        if isinstance(r, str):
            tags.add(("role", r))
    for m in decision.get("matched") or []:
        if isinstance(m, dict) and isinstance(m.get("rule"), str):
            tags.add(("rule", m["rule"]))
    summary = classification.get("summary")
    if isinstance(summary, dict):
        tags.update(("label", k) for k in summary if isinstance(k, str))
    for f in classification.get("findings") or []:
        if isinstance(f, dict) and isinstance(f.get("label"), str):
            tags.add(("label", f["label"]))
    return fields, sorted(tags)


_CHUNK = 8 << 20
# Matches are counted up to this many ("10,000+" beyond): an exact count of a broad filter over a
# million records costs more than the page itself; the exports hold every match.
COUNT_CAP = 10_000

_COLS = ("segment", "line", "offset", "length", "line_sha256", "kind", "seq", "request_id", "ts_ms", "hash",
         "subject", "tenant", "route", "outcome", "code", "provider", "model", "policy_version", "status",
         "tree_size")


@dataclass
class Query:
    """A search, as it appears in the URL."""
    filters: dict[str, str]
    from_ms: int | None = None
    to_ms: int | None = None

    def plan(self) -> Plan:
        """The SQL for the decisions this query selects. Without a tag filter, the records table
        (one of its (kind, column, ts_ms) indexes); with one, that tag's (k, v, ts_ms) index range
        drives, in time order, and the other filters are checked on the rows it yields."""
        tags = [(k, self.filters[name]) for name, k in TAG_FILTERS.items() if self.filters.get(name)]
        cond: list[str] = []
        args: list[Any] = []
        if tags:
            source, ts, rid = "tags t0 JOIN records r ON r.id = t0.rid", "t0.ts_ms", "t0.rid"
            cond.append("t0.k = ? AND t0.v = ?")
            args += list(tags[0])
        else:
            source, ts, rid = "records r", "r.ts_ms", "r.id"
            cond.append("r.kind = 'decision'")
        if self.from_ms is not None:
            cond.append(f"{ts} >= ?")
            args.append(self.from_ms)
        if self.to_ms is not None:
            cond.append(f"{ts} < ?")
            args.append(self.to_ms)
        for name, col in COLUMN_FILTERS.items():
            v = self.filters.get(name)
            if v:
                cond.append(f"r.{col} = ?")
                args.append(v)
        for i, (k, v) in enumerate(tags[1:], start=1):
            cond.append(f"EXISTS (SELECT 1 FROM tags t{i} WHERE t{i}.rid = {rid} AND t{i}.k = ? AND t{i}.v = ?)")
            args += [k, v]
        # Only tag filters (and time): counting needs no row of the records table at all.
        bare = bool(tags) and not any(self.filters.get(name) for name in COLUMN_FILTERS)
        return Plan(source, " AND ".join(cond), args, ts, rid, "tags t0" if bare else source)


@dataclass(frozen=True)
class Plan:
    source: str
    where: str
    args: list
    ts: str
    rid: str
    count_source: str


def _per_generation(method):
    """Aggregates over the whole index are kept until the index changes (a static store's overview
    is computed once); at most 256 kept."""
    def wrapper(self, *args, **kwargs):
        key = (method.__name__, repr(args), repr(sorted(kwargs.items())))
        with self._memo_lock:
            if self._memo_generation != self.generation:
                self._memo.clear()
                self._memo_generation = self.generation
            if key in self._memo:
                return self._memo[key]
        value = method(self, *args, **kwargs)
        with self._memo_lock:
            if len(self._memo) >= 256:
                self._memo.clear()
            self._memo[key] = value
        return value
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Index:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.generation = 0   # bumped whenever records were added or dropped
        self._memo: dict = {}
        self._memo_generation = 0
        self._memo_lock = threading.Lock()
        with self._lock:
            db = self.db()
            # executescript commits by itself: no explicit transaction around these.
            db.executescript("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);")
            row = db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                # An index of another layout (or none): start again from the records.
                db.executescript("DROP TABLE IF EXISTS tags; DROP TABLE IF EXISTS records; "
                                 "DROP TABLE IF EXISTS segments; DELETE FROM meta;")
            db.executescript(SCHEMA)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.commit()

    # --- connections: one per thread for reads, a lock around writes -----------------------------
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, index: Index) -> None:
            self.index = index

        def __enter__(self) -> sqlite3.Connection:
            self.index._lock.acquire()
            self.conn = self.index.db()
            self.conn.execute("BEGIN")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.index._lock.release()

    def _write(self) -> Index._Tx:
        return Index._Tx(self)

    # --- building ---------------------------------------------------------------------------------
    def refresh(self, store) -> int:
        """Bring the index up to the store; returns how many records were added."""
        if store.kind == "postgres":
            return self._after_refresh(self._refresh_pg(store))
        return self._after_refresh(self._refresh_files(store))

    def _after_refresh(self, added: int) -> int:
        if added >= 10_000:   # the query planner's statistics, after a large build
            with self._lock:
                self.db().executescript("PRAGMA analysis_limit = 2000; ANALYZE;")
        return added

    def _refresh_files(self, store) -> int:
        added = 0
        known = {r["name"]: r for r in self.db().execute("SELECT * FROM segments")}
        present = set()
        for seg in store.segments():
            present.add(seg.name)
            row = known.get(seg.name)
            if row is not None and (row["inode"], row["head"]) == (seg.inode, seg.head_sha256) \
                    and seg.size >= row["next_offset"] \
                    and not (seg.size == row["size"] and seg.mtime_ns != row["mtime_ns"]):
                if seg.size == row["next_offset"]:
                    continue
                start_line, start_offset = row["next_line"], row["next_offset"]
            else:
                self._drop_segment(seg.name)  # new, rewritten, shrunk or changed in place
                start_line, start_offset = 1, 0
            offset, line_no = start_offset, start_line
            while True:   # in chunks: a large segment is never held in memory whole
                data = store.read_from(seg.name, offset, _CHUNK)
                complete = data[: data.rfind(b"\n") + 1]   # a torn or still-being-written tail waits
                if not complete:
                    break
                entries = []
                for raw in complete.split(b"\n")[:-1]:
                    entries.append((line_no, offset, len(raw), raw))
                    offset += len(raw) + 1
                    line_no += 1
                added += self._insert(seg.name, entries, next_line=line_no, next_offset=offset,
                                      stat=(seg.size, seg.mtime_ns, seg.inode, seg.head_sha256))
                if len(data) < _CHUNK:
                    break
        for gone in set(known) - present:
            self._drop_segment(gone)
        return added

    def _refresh_pg(self, store) -> int:
        marks = {r["name"]: r["next_line"] - 2 for r in self.db().execute("SELECT name, next_line FROM segments")}
        by_seg: dict[str, list] = {}
        for name, seq, line in store.rows_after(marks):
            by_seg.setdefault(name, []).append((seq + 1, None, len(line), line))
        added = 0
        for name, entries in by_seg.items():
            added += self._insert(name, entries, next_line=entries[-1][0] + 1, next_offset=0,
                                  stat=(None, None, None, None))
        return added

    def forget_segment(self, name: str) -> None:
        """Drop a segment whose records no longer match what was indexed; the next refresh indexes
        it again from its records."""
        self._drop_segment(name)

    def _drop_segment(self, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM tags WHERE rid IN (SELECT id FROM records WHERE segment = ?)", (name,))
            db.execute("DELETE FROM records WHERE segment = ?", (name,))
            db.execute("DELETE FROM segments WHERE name = ?", (name,))
        self.generation += 1

    def _insert(self, name: str, entries: list, *, next_line: int, next_offset: int, stat: tuple) -> int:
        rows, tag_rows = [], []
        genesis = None
        fields: dict[str, Any]
        tags: list[tuple[str, str]]
        for line_no, offset, length, raw in entries:
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                fields, tags = {"kind": "unreadable"}, []
            else:
                fields, tags = extract(rec)
                if fields["kind"] != "decision":
                    tags = []   # the filters select decisions
                if fields["kind"] == "genesis":
                    genesis = rec
            rows.append((name, line_no, offset, length, hashlib.sha256(raw).hexdigest(),
                         *(fields.get(c) for c in _COLS[5:])))
            tag_rows.append(tags)
        with self._write() as db:
            seg = db.execute("SELECT name FROM segments WHERE name = ?", (name,)).fetchone()
            if seg is None:
                db.execute("INSERT INTO segments (name) VALUES (?)", (name,))
            if genesis is not None:
                db.execute("UPDATE segments SET writer_id = ?, segment_id = ?, public_key = ?, key_id = ? "
                           "WHERE name = ?", (_str(genesis.get("writer_id")), _str(genesis.get("segment_id")),
                                              _str(genesis.get("public_key")), _str(genesis.get("key_id")), name))
            db.execute("UPDATE segments SET size = ?, mtime_ns = ?, inode = ?, head = ?, next_line = ?, "
                       "next_offset = ? WHERE name = ?", (*stat, next_line, next_offset, name))
            placeholders = ",".join("?" * len(_COLS))
            for row, tags in zip(rows, tag_rows, strict=True):
                cur = db.execute(f"INSERT INTO records ({','.join(_COLS)}) VALUES ({placeholders})", row)
                if tags:
                    db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?)",
                                   [(cur.lastrowid, k, v, row[8]) for k, v in tags])
        if rows:
            self.generation += 1
        return len(rows)

    # --- reading ----------------------------------------------------------------------------------
    def count(self, q: Query, cap: int = COUNT_CAP) -> int:
        p = q.plan()
        return self.db().execute(f"SELECT count(*) FROM (SELECT 1 FROM {p.count_source} WHERE {p.where} LIMIT ?)",
                                 (*p.args, cap)).fetchone()[0]

    def search(self, q: Query, *, limit: int, offset: int = 0) -> list[sqlite3.Row]:
        p = q.plan()
        return self.db().execute(
            f"SELECT r.* FROM {p.source} WHERE {p.where} ORDER BY {p.ts} DESC, {p.rid} DESC LIMIT ? OFFSET ?",
            (*p.args, limit, offset)).fetchall()

    def iter_search(self, q: Query, batch: int = 2000) -> Iterable[sqlite3.Row]:
        p = q.plan()
        last = None
        while True:
            extra = ""
            extra_args: list[Any] = []
            if last is not None:   # keyset paging: each batch is an index range, however deep
                extra, extra_args = f" AND ({p.ts} < ? OR ({p.ts} = ? AND {p.rid} < ?))", [last[0], last[0], last[1]]
            rows = self.db().execute(f"SELECT r.* FROM {p.source} WHERE {p.where}{extra} "
                                     f"ORDER BY {p.ts} DESC, {p.rid} DESC LIMIT ?",
                                     (*p.args, *extra_args, batch)).fetchall()
            if not rows:
                return
            yield from rows
            last = (rows[-1]["ts_ms"], rows[-1]["id"])

    def tags_of(self, rids: list[int]) -> dict[int, dict[str, list[str]]]:
        out: dict[int, dict[str, list[str]]] = {r: {} for r in rids}
        if not rids:
            return out
        for row in self.db().execute(f"SELECT rid, k, v FROM tags WHERE rid IN ({','.join('?' * len(rids))}) "
                                     "ORDER BY k, v", rids):
            out[row[0]].setdefault(row[1], []).append(row[2])
        return out

    def outcomes_for(self, request_ids: list[str]) -> dict[str, sqlite3.Row]:
        if not request_ids:
            return {}
        # "+kind": look up by request id, never by scanning every outcome.
        rows = self.db().execute(
            f"SELECT * FROM records WHERE request_id IN ({','.join('?' * len(request_ids))}) AND +kind = 'outcome'",
            request_ids).fetchall()
        return {r["request_id"]: r for r in rows}

    def by_request(self, request_id: str) -> list[sqlite3.Row]:
        return self.db().execute("SELECT * FROM records WHERE request_id = ? ORDER BY ts_ms, id",
                                 (request_id,)).fetchall()

    def segment(self, name: str) -> sqlite3.Row | None:
        return self.db().execute("SELECT * FROM segments WHERE name = ?", (name,)).fetchone()

    def segments(self) -> list[sqlite3.Row]:
        return self.db().execute("SELECT * FROM segments ORDER BY name").fetchall()

    def record_at(self, segment: str, line: int) -> sqlite3.Row | None:
        return self.db().execute("SELECT * FROM records WHERE segment = ? AND line = ?", (segment, line)).fetchone()

    def next_checkpoint(self, segment: str, line: int) -> sqlite3.Row | None:
        return self.db().execute("SELECT * FROM records WHERE segment = ? AND line > ? AND kind = 'checkpoint' "
                                 "ORDER BY line LIMIT 1", (segment, line)).fetchone()

    def last_checkpoints(self) -> list[sqlite3.Row]:
        return self.db().execute(
            "SELECT r.* FROM records r JOIN (SELECT segment, max(line) AS line FROM records "
            "WHERE kind = 'checkpoint' GROUP BY segment) c ON r.segment = c.segment AND r.line = c.line "
            "ORDER BY r.ts_ms DESC").fetchall()

    @_per_generation
    def counts_by(self, column: str, q: Query, limit: int = 12) -> list[tuple[str, int]]:
        p = q.plan()
        if column in TAG_FILTERS.values():
            sql = (f"SELECT t.v, count(*) FROM tags t WHERE t.k = ? AND t.rid IN "
                   f"(SELECT {p.rid} FROM {p.source} WHERE {p.where}) GROUP BY t.v ORDER BY 2 DESC LIMIT ?")
            return [(r[0], r[1]) for r in self.db().execute(sql, (column, *p.args, limit))]
        assert column in COLUMN_FILTERS.values()
        sql = f"SELECT r.{column}, count(*) FROM {p.source} WHERE {p.where} GROUP BY 1 ORDER BY 2 DESC LIMIT ?"
        return [(r[0] if r[0] is not None else "(none)", r[1]) for r in self.db().execute(sql, (*p.args, limit))]

    @_per_generation
    def series(self, q: Query, bucket_ms: int, by: str | None) -> list[tuple[int, str, int]]:
        """(bucket start, group, count) for decisions over time."""
        p = q.plan()
        if by is None:
            sql = f"SELECT ({p.ts} / ?) * ?, 'decisions', count(*) FROM {p.source} WHERE {p.where} GROUP BY 1 ORDER BY 1"
            return [tuple(r) for r in self.db().execute(sql, (bucket_ms, bucket_ms, *p.args))]
        if by in TAG_FILTERS.values():
            sql = (f"SELECT (t.ts_ms / ?) * ?, t.v, count(*) FROM tags t WHERE t.k = ? AND t.rid IN "
                   f"(SELECT {p.rid} FROM {p.source} WHERE {p.where}) GROUP BY 1, 2 ORDER BY 1")
            return [tuple(r) for r in self.db().execute(sql, (bucket_ms, bucket_ms, by, *p.args))]
        assert by in COLUMN_FILTERS.values()
        sql = (f"SELECT ({p.ts} / ?) * ?, coalesce(r.{by}, '(none)'), count(*) FROM {p.source} WHERE {p.where} "
               "GROUP BY 1, 2 ORDER BY 1")
        return [tuple(r) for r in self.db().execute(sql, (bucket_ms, bucket_ms, *p.args))]

    @_per_generation
    def time_span(self) -> tuple[int | None, int | None]:
        row = self.db().execute("SELECT min(ts_ms), max(ts_ms) FROM records WHERE kind = 'decision'").fetchone()
        return row[0], row[1]

    @_per_generation
    def policy_versions(self) -> list[sqlite3.Row]:
        return self.db().execute(
            "SELECT policy_version, min(ts_ms) AS first_ms, max(ts_ms) AS last_ms, count(*) AS n FROM records "
            "WHERE kind = 'decision' AND policy_version IS NOT NULL GROUP BY policy_version ORDER BY first_ms"
        ).fetchall()

    @_per_generation
    def total(self) -> int:
        return self.db().execute("SELECT count(*) FROM records").fetchone()[0]
