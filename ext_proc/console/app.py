"""The console's web application (Starlette + Jinja2, htmx for in-page updates). Read only: it reads
the store and its own index, and writes only its access log and the index in its cache dir."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime as dt
import difflib
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, open_capture
from ext_proc.console import charts
from ext_proc.console.auth import AccessLog, AuditorAuth
from ext_proc.console.chainstatus import ChainStatus, record_verdict
from ext_proc.console.evidence import replay_with
from ext_proc.console.index import COUNT_CAP, FILTERS, Index, Query
from ext_proc.identity.model import Identity, IdentityError

HERE = Path(__file__).parent
COOKIE = "ledgergate_console"
PAGE_SIZE = 50
EXPORT_MAX = 100_000
REPORT_MAX = 2_000
WHATIF_MAX = 20_000
LARGE_STORE = 200_000   # records
CSV_COLUMNS = ("time_utc", "request_id", "outcome", "code", "status", "subject", "tenant", "roles", "route",
               "provider", "model", "rules", "labels", "policy_version", "outcome_status", "segment", "line", "hash")


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str | None) -> int | None:
    """'2026-11-29T18:00' (UTC, as a datetime-local input sends it) or epoch milliseconds."""
    if not text:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def iso_input(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def query_from(params) -> Query:
    return Query({k: params.get(k, "").strip() for k in FILTERS if params.get(k, "").strip()},
                 parse_time(params.get("from")), parse_time(params.get("to")))


def query_params(q: Query, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(q.filters)
    if q.from_ms is not None:
        out["from"] = iso_input(q.from_ms) if q.from_ms % 60_000 == 0 else q.from_ms
    if q.to_ms is not None:
        out["to"] = iso_input(q.to_ms) if q.to_ms % 60_000 == 0 else q.to_ms
    out.update({k: v for k, v in extra.items() if v not in (None, "")})
    return out


def url(path: str, q: Query | None = None, **extra: Any) -> str:
    params = query_params(q, **extra) if q is not None else {k: v for k, v in extra.items() if v not in (None, "")}
    return path + ("?" + urlencode(params) if params else "")


class Console:
    def __init__(self, store, index: Index, auth: AuditorAuth, access_log: AccessLog,
                 policy_store: str | Path | None = None, *, refresh_s: float = 0.5,
                 witnesses: list[str] | None = None, witness_table: str | None = None) -> None:
        self.store = store
        self.index = index
        self.auth = auth
        self.access_log = access_log
        self.policy_store = Path(policy_store) if policy_store else None
        self.chain = ChainStatus(store, witnesses, witness_table)
        self.witnesses = list(witnesses or [])
        self.refresh_s = refresh_s
        self._last_refresh = 0.0
        self._refresh_lock = asyncio.Lock()
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.globals.update(fmt_ms=fmt_ms, url=url, iso_input=iso_input, filters=FILTERS)

    # --- plumbing ---------------------------------------------------------------------------------
    async def refresh_index(self, force: bool = False) -> None:
        """Index what the store gained since the last look (at most every refresh_s)."""
        async with self._refresh_lock:
            if force or time.monotonic() - self._last_refresh >= self.refresh_s:
                await asyncio.to_thread(self.index.refresh, self.store)
                self._last_refresh = time.monotonic()

    async def who(self, request: Request) -> Identity | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            return await self.auth.authenticate(token, time.time())
        except IdentityError:
            return None

    def log_access(self, request: Request, identity: Identity | None, status: int, what: dict | None = None) -> None:
        self.access_log.append({
            "subject": identity.subject if identity else None, "issuer": identity.issuer if identity else None,
            "credential_id": identity.credential_id if identity else None,
            "method": request.method, "path": request.url.path,
            "query": dict(request.query_params), "status": status, **({"viewed": what} if what else {})})

    def render(self, request: Request, name: str, identity: Identity | None, status: int = 200, **ctx) -> HTMLResponse:
        html = self.templates.get_template(name).render(request=request, me=identity, **ctx)
        return HTMLResponse(html, status_code=status)

    def page(self, handler):
        """Authenticate (an auditor's JWT in the Authorization header or the session cookie),
        bring the index up to date, run the page, and record the access, allowed or not."""
        async def endpoint(request: Request) -> Response:
            identity = await self.who(request)
            if identity is None:
                self.log_access(request, None, 401)
                if "text/html" in request.headers.get("accept", "") and request.method == "GET":
                    return RedirectResponse(url("/login", next=str(request.url.path) + (
                        "?" + request.url.query if request.url.query else "")), status_code=303)
                return JSONResponse({"error": "an auditor token is required"}, status_code=401)
            await self.refresh_index()
            response, what = await handler(request, identity)
            self.log_access(request, identity, response.status_code, what)
            return response
        return endpoint

    # --- pages ------------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", None, next=_safe_next(request.query_params.get("next")),
                           error=None)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", "")).strip()
        nxt = _safe_next(str(form.get("next", "")))
        try:
            identity = await self.auth.authenticate(token, time.time())
        except IdentityError as exc:
            self.log_access(request, None, 401, {"login": exc.reason})
            return self.render(request, "login.html", None, status=401, next=nxt, error=exc.message)
        self.log_access(request, identity, 303, {"login": "ok"})
        resp = RedirectResponse(nxt, status_code=303)
        max_age = int(identity.expires_at - time.time()) if identity.expires_at else 3600
        resp.set_cookie(COOKIE, token, max_age=max(1, max_age), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    async def logout(self, request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    async def overview(self, request: Request, me: Identity):
        # A small store verifies in a moment: wait for it. A large one takes minutes: show the
        # last verdict (or "running") at once rather than hold the page.
        wait = 5.0 if self.index.total() < LARGE_STORE else 0.2
        status, fresh = await asyncio.to_thread(self.chain.current, wait)
        q = query_from(request.query_params)
        first, last = self.index.time_span()
        segs = []
        for row in self.index.segments():
            s = status.segments.get(row["name"]) if status else None
            segs.append({"row": row, "status": s})
        start, end = q.from_ms or first or 0, q.to_ms or last or 0
        # Per hour up to a couple of days; longer spans get wider buckets (at most ~60 bars).
        bucket = max(3_600_000, charts.bucket_for(max(1, end - start)))
        hourly = charts.over_time(self.index.series(q, bucket, "outcome"), start_ms=start, end_ms=end,
                                  bucket_ms=bucket, title=f"Decisions per {_bucket_name(bucket)}, by outcome",
                                  colors=charts.OUTCOME_COLORS,
                                  zoom=lambda a, b: url("/charts", q, by="outcome", **{"from": a, "to": b})) \
            if first is not None else ""
        by_outcome = charts.bars(self.index.counts_by("outcome", q), title="Decisions by outcome",
                                 colors=charts.OUTCOME_COLORS,
                                 link=lambda v: url("/search", Query({**q.filters, "decision": v}, q.from_ms, q.to_ms)))
        top_labels = charts.bars(self.index.counts_by("label", q), title="Top labels",
                                 link=lambda v: url("/search", Query({**q.filters, "label": v}, q.from_ms, q.to_ms)))
        top_routes = charts.bars(self.index.counts_by("route", q), title="Top routes",
                                 link=lambda v: url("/search", Query({**q.filters, "route": v}, q.from_ms, q.to_ms)))
        return self.render(request, "overview.html", me, status=200, chain=status, fresh=fresh,
                           chain_error=self.chain.error, segments=segs, checkpoints=self.index.last_checkpoints()[:5],
                           hourly=hourly, by_outcome=by_outcome, top_labels=top_labels, top_routes=top_routes,
                           store=self.store.label, total=self.index.total(), q=q,
                           witness_specs=self.witnesses), None

    def _rows(self, rows) -> list[dict]:
        tags = self.index.tags_of([r["id"] for r in rows])
        outcomes = self.index.outcomes_for([r["request_id"] for r in rows if r["request_id"]])
        out = []
        for r in rows:
            o = outcomes.get(r["request_id"])
            out.append({"r": r, "tags": tags.get(r["id"], {}), "outcome": o})
        return out

    async def search(self, request: Request, me: Identity):
        q = query_from(request.query_params)
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page = 1
        # One row more than a page says whether there is a next page; the number of matches is
        # counted by a separate request (/search/count, loaded by htmx) so the page never waits
        # for a count over a broad filter.
        found = self.index.search(q, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        rows = self._rows(found[:PAGE_SIZE])
        name = "_results.html" if request.headers.get("hx-request") and \
            request.headers.get("hx-target") == "results" else "search.html"
        return self.render(request, name, me, q=q, rows=rows, page=page, has_next=len(found) > PAGE_SIZE,
                           page_size=PAGE_SIZE), {"search": query_params(q), "page": page}

    async def search_count(self, request: Request, me: Identity):
        q = query_from(request.query_params)
        total = await asyncio.to_thread(self.index.count, q)
        return self.render(request, "_count.html", me, total=total, cap=COUNT_CAP,
                           pages=max(1, -(-total // PAGE_SIZE))), {"count": query_params(q)}

    def _load(self, row) -> tuple[bytes, dict]:
        """A record's bytes, read from the store (never from the index), checked against the digest
        the index saw; a mismatch means the store changed: the index is rebuilt for that segment."""
        if self.store.kind == "postgres":
            raw = self.store.read_record(row["segment"], row["seq"])
        else:
            raw = self.store.read_at(row["segment"], row["offset"], row["length"])

        if hashlib.sha256(raw).hexdigest() != row["line_sha256"]:
            raise StaleIndex(row["segment"])
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = {"kind": "unreadable"}
        return raw, rec if isinstance(rec, dict) else {"kind": "unreadable"}

    async def _request_records(self, request_id: str) -> list[dict]:
        status = await asyncio.to_thread(self.chain.current, 5.0)
        for attempt in range(2):
            rows = self.index.by_request(request_id)
            try:
                return [self._describe(status, row, *self._load(row)) for row in rows]
            except (StaleIndex, FileNotFoundError) as stale:
                if attempt:
                    raise
                if isinstance(stale, StaleIndex):
                    self.index.forget_segment(stale.segment)
                await self.refresh_index(force=True)
        return []

    def _describe(self, chain_status, row, raw: bytes, rec: dict) -> dict:
        status, fresh = chain_status
        seg = self.index.segment(row["segment"])
        prev = self.index.record_at(row["segment"], row["line"] - 1) if row["line"] > 1 else None
        verdict = record_verdict(status, fresh, seg, row["line"], raw, rec, prev["hash"] if prev else None,
                                 self.index.next_checkpoint(row["segment"], row["line"]))
        return {"row": row, "rec": rec, "verdict": verdict, "segment": seg}

    async def one_request(self, request: Request, me: Identity):
        request_id = request.path_params["request_id"]
        records = await self._request_records(request_id)
        if not records:
            return self.render(request, "notfound.html", me, status=404, request_id=request_id), \
                {"request_id": request_id}
        decision = next((r for r in records if r["rec"].get("kind") == "decision"), None)
        outcome = next((r for r in records if r["rec"].get("kind") == "outcome"), None)
        others = [r for r in records if r is not decision and r is not outcome]
        template = "report.html" if request.url.path.endswith("/report") else "request.html"
        return self.render(request, template, me, request_id=request_id, decision=decision, outcome=outcome,
                           others=others, records=records, generated=fmt_ms(int(time.time() * 1000)),
                           store=self.store.label, has_policy=self._has_policy), {"request_id": request_id}

    async def period_report(self, request: Request, me: Identity):
        """A printable report of a filtered set (a period, a subject...): the chain status of every
        segment, counts, and the decisions with the verifier's verdict on where each one lies."""
        q = query_from(request.query_params)
        status, fresh = await asyncio.to_thread(self.chain.current, 30.0)
        rows = self._rows(self.index.search(q, limit=REPORT_MAX, offset=0))
        total = self.index.count(q)
        for item in rows:
            seg = status.segments.get(item["r"]["segment"]) if status else None
            item["state"] = "unverified" if seg is None else \
                "broken" if seg.state == "broken" and (seg.broken_line is None or item["r"]["line"] >= seg.broken_line) \
                else "verified"
        segments = list(status.segments.values()) if status else []
        return self.render(request, "period.html", me, q=q, rows=rows, total=total, shown=len(rows),
                           segments=segments, fresh=fresh, by_outcome=self.index.counts_by("outcome", q),
                           by_label=self.index.counts_by("label", q, limit=50), store=self.store.label,
                           generated=fmt_ms(int(time.time() * 1000)),
                           query=query_params(q)), {"report": query_params(q)}

    async def decrypt(self, request: Request, me: Identity):
        """Encrypted captures of one request opened with the capture key the auditor presents
        (the key file's 32 bytes, uploaded, or pasted as hex or base64). The key is used for this
        request only, never kept or logged; the access is recorded with the key id."""
        request_id = request.path_params["request_id"]
        form = await request.form()
        key = await _capture_key(form)
        records = await self._request_records(request_id)
        opened, problems, key_ids = [], [], []
        for item in records:
            env = item["rec"].get("capture")
            if not isinstance(env, dict):
                continue
            kind = item["rec"].get("kind")
            aad = request_id.encode() + (RESPONSE_CAPTURE_AAD if kind == "outcome" else b"")
            key_ids.append(env.get("key_id"))
            if key is None:
                problems.append("the capture key must be 32 bytes (a key file, or 64 hex digits, or base64)")
                break
            try:
                plain = open_capture(key, env, aad)
            except Exception:  # noqa: BLE001 - a wrong key or altered ciphertext: say which capture
                problems.append(f"the {kind} capture does not open with this key")
                continue
            opened.append({"kind": kind, "text": plain.decode("utf-8", "replace"), "bytes": len(plain),
                           "verdict": item["verdict"]})
        if not key_ids:
            problems.append("this request has no encrypted capture")
        resp = self.render(request, "decrypted.html", me, status=200 if opened else 400, request_id=request_id,
                           opened=opened, problems=problems)
        resp.headers["cache-control"] = "no-store"
        return resp, {"request_id": request_id, "decrypted_capture": [o["kind"] for o in opened],
                      "capture_key_ids": key_ids}

    def _has_policy(self, version: str | None) -> bool:
        return bool(self.policy_store and version and (self.policy_store / f"{version}.json").is_file())

    async def export(self, request: Request, me: Identity):
        q = query_from(request.query_params)
        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "json"):
            return JSONResponse({"error": "export as .csv or .json"}, status_code=404), {"export": fmt}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rows = self.index.iter_search(q)

        def flat():
            n = 0
            batch = []
            for r in rows:
                batch.append(r)
                if len(batch) == 500:
                    yield from self._flat(batch)
                    batch = []
                n += 1
                if n >= EXPORT_MAX:
                    break
            yield from self._flat(batch)

        if fmt == "csv":
            def gen():
                buf = io.StringIO()
                w = csv.DictWriter(buf, CSV_COLUMNS)
                w.writeheader()
                for item in flat():
                    w.writerow({k: _csv_cell(v) for k, v in item.items()})
                    if buf.tell() > 65536:
                        yield buf.getvalue()
                        buf.seek(0)
                        buf.truncate()
                yield buf.getvalue()
            media, body = "text/csv; charset=utf-8", gen()
        else:
            def gen():
                yield '{"query": ' + json.dumps(query_params(q)) + ', "exported_utc": "' + stamp + '", "records": ['
                first = True
                for item in flat():
                    yield ("" if first else ",") + "\n" + json.dumps(item, sort_keys=True)
                    first = False
                yield "\n]}\n"
            media, body = "application/json", gen()
        headers = {"content-disposition": f'attachment; filename="ledgergate-decisions-{stamp}.{fmt}"'}
        return StreamingResponse(body, media_type=media, headers=headers), {"export": fmt, "search": query_params(q)}

    def _flat(self, rows) -> list[dict]:
        out = []
        for item in self._rows(rows):
            r, tags, o = item["r"], item["tags"], item["outcome"]
            out.append({"time_utc": fmt_ms(r["ts_ms"]), "request_id": r["request_id"], "outcome": r["outcome"],
                        "code": r["code"], "status": r["status"], "subject": r["subject"], "tenant": r["tenant"],
                        "roles": " ".join(tags.get("role", [])), "route": r["route"], "provider": r["provider"],
                        "model": r["model"], "rules": " ".join(tags.get("rule", [])),
                        "labels": " ".join(tags.get("label", [])), "policy_version": r["policy_version"],
                        "outcome_status": o["status"] if o is not None else None, "segment": r["segment"],
                        "line": r["line"], "hash": r["hash"]})
        return out

    async def charts_page(self, request: Request, me: Identity):
        q = query_from(request.query_params)
        by = request.query_params.get("by", "outcome")
        columns = {"outcome": "outcome", "label": "label", "route": "route", "role": "role",
                   "policy": "policy_version", "provider": "provider", "model": "model", "rule": "rule"}
        column = columns.get(by, "outcome")
        first, last = self.index.time_span()
        start, end = q.from_ms or first or 0, q.to_ms or last or 0
        bucket = charts.bucket_for(max(1, end - start))
        svg = charts.over_time(self.index.series(q, bucket, column), start_ms=start, end_ms=end, bucket_ms=bucket,
                               title=f"Decisions per {_bucket_name(bucket)}, by {by}",
                               colors=charts.OUTCOME_COLORS if column == "outcome" else None,
                               zoom=lambda a, b: url("/charts", q, by=by, **{"from": a, "to": b})) \
            if first is not None else ""
        span = max(1, end - start)
        zoom_out = url("/charts", Query(q.filters, start - span // 2, end + span // 2), by=by)
        return self.render(request, "charts.html", me, q=q, by=by, choices=list(columns), svg=svg,
                           zoom_out=zoom_out, start=start, end=end), {"charts": by, "search": query_params(q)}

    def _policy_text(self, version: str) -> str | None:
        if not self.policy_store or len(version) != 64 or not all(c in "0123456789abcdef" for c in version):
            return None
        path = self.policy_store / f"{version}.json"
        if not path.is_file():
            return None

        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != version:
            return None  # not what the records name: never shown as if it were
        return json.dumps(json.loads(data), indent=2, sort_keys=True)

    async def policies(self, request: Request, me: Identity):
        versions = [{"v": r["policy_version"], "first": r["first_ms"], "last": r["last_ms"], "n": r["n"],
                     "stored": self._has_policy(r["policy_version"])} for r in self.index.policy_versions()]
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        diff = None
        if a and b:
            ta, tb = self._policy_text(a), self._policy_text(b)
            if ta is not None and tb is not None:
                diff = difflib.HtmlDiff(wrapcolumn=80).make_table(ta.splitlines(), tb.splitlines(), a[:12], b[:12],
                                                                  context=True, numlines=3)
            else:
                diff = ""
        return self.render(request, "policies.html", me, versions=versions, a=a, b=b, diff=diff,
                           policy_store=self.policy_store), {"policies": {"a": a, "b": b}}

    async def whatif(self, request: Request, me: Identity):
        """What-if: the filtered decisions' recorded inputs evaluated by a candidate policy version
        from the policy store; which outcomes would change."""
        q = query_from(request.query_params)
        candidate = request.query_params.get("candidate", "")
        report, error, considered = None, None, 0
        store = self.policy_store
        if store is None or self._policy_text(candidate) is None:   # no store: no text either
            error = "the candidate is not a version in the policy store (or does not hash to its version)"
        else:
            from ext_proc.policy import PolicyStore

            policy = PolicyStore(store).get(candidate)
            rows = self.index.search(q, limit=WHATIF_MAX, offset=0)
            considered = len(rows)

            def records():
                for row in rows:
                    try:
                        yield self._load(row)[1]
                    except (StaleIndex, FileNotFoundError):
                        continue
            report = await asyncio.to_thread(replay_with, records(),
                                             lambda _version, inp: policy.evaluate(inp).to_record())
        return self.render(request, "whatif.html", me, q=q, candidate=candidate, report=report, error=error,
                           considered=considered, total=self.index.count(q),
                           versions=[r["policy_version"] for r in self.index.policy_versions()]), \
            {"whatif": candidate, "search": query_params(q)}

    async def policy(self, request: Request, me: Identity):
        version = request.path_params["version"]
        text = self._policy_text(version)
        return self.render(request, "policy.html", me, status=200 if text else 404, version=version,
                           text=text), {"policy": version}


class StaleIndex(Exception):
    def __init__(self, segment: str) -> None:
        super().__init__(segment)
        self.segment = segment


def _csv_cell(value: Any) -> Any:
    """Subjects, tenants and routes come from callers: a cell a spreadsheet would run as a
    formula is quoted (OWASP's CSV injection advice)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def _capture_key(form) -> bytes | None:
    upload = form.get("key_file")
    if upload is not None and hasattr(upload, "read"):
        data = await upload.read(64)
        if len(data) == 32:
            return data
    text = str(form.get("key", "")).strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except ValueError:
            continue
        if len(key) == 32:
            return key
    return None


def _bucket_name(ms: int) -> str:
    return {60_000: "minute", 300_000: "5 minutes", 900_000: "15 minutes", 3_600_000: "hour",
            21_600_000: "6 hours", 86_400_000: "day"}.get(ms, "week")


def _safe_next(nxt: str | None) -> str:
    # Only a path on this site: never an open redirect.
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt


def create_app(console: Console) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        await console.auth.start()
        await console.refresh_index(force=True)
        try:
            yield
        finally:
            console.chain.close()
            await console.auth.close()

    p = console.page
    routes = [
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/", p(console.overview)),
        Route("/search", p(console.search)),
        Route("/search/count", p(console.search_count)),
        Route("/request/{request_id}", p(console.one_request)),
        Route("/request/{request_id}/report", p(console.one_request)),
        Route("/request/{request_id}/decrypt", p(console.decrypt), methods=["POST"]),
        Route("/export.{fmt:str}", p(console.export)),
        Route("/report", p(console.period_report)),
        Route("/charts", p(console.charts_page)),
        Route("/policies", p(console.policies)),
        Route("/policies/whatif", p(console.whatif)),
        Route("/policies/{version}", p(console.policy)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
