"""The auditor's console on a large generated store: how long the index takes to build, and the
latency of filtered search pages served by `ledgergate console` over loopback HTTP.

    .venv/bin/python tests/bench/bench_console.py --records 1000000 [--dir var/bench/console]

The store is generated once (signed and chained by the real chain writer) and reused on later runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ext_proc.console.sample_store import LABELS, ROLES, SUBJECTS, TENANTS, write_sample_store  # noqa: E402
from ext_proc.identity.dev import generate_dev_issuer, mint_dev_token  # noqa: E402
from tests.support import free_ports, wait_port  # noqa: E402

START = 1_795_000_000_000
DAY = 86_400_000


def filtered_urls(rnd: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        kind = rnd.randrange(8)
        day = START + rnd.randrange(25) * DAY
        iso = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(day / 1000))
        iso2 = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((day + DAY) / 1000))
        out.append([
            f"/search?subject={rnd.choice(SUBJECTS)}",
            f"/search?decision=deny&page={rnd.randrange(1, 20)}",
            f"/search?label={rnd.choice(LABELS)}",
            f"/search?role={rnd.choice(ROLES)}&tenant={rnd.choice(TENANTS)}",
            f"/search?from={iso}&to={iso2}",
            f"/search?subject={rnd.choice(SUBJECTS)}&from={iso}&to={iso2}&decision=redact",
            "/search?rule=deny-secrets&label=secret.api_key",
            "/search?provider=gemini&model=gemini-2.0-flash&page=3",
        ][kind])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000, help="approximate number of records")
    p.add_argument("--dir", default=str(REPO / "var" / "bench" / "console"))
    p.add_argument("--pages", type=int, default=400)
    a = p.parse_args()
    base = Path(a.dir) / f"r{a.records}"
    audit, var = base / "audit", base / "var"
    if not audit.exists():
        t = time.perf_counter()
        # ~1.89 records per request (a denied request has no outcome record).
        write_sample_store(audit, requests=int(a.records / 1.89), start_ms=START, span_ms=30 * DAY, writers=4)
        print(f"generated store: {time.perf_counter() - t:.1f} s", flush=True)
    records = sum(f.read_bytes().count(b"\n") for f in audit.glob("*.jsonl"))
    size_mb = sum(f.stat().st_size for f in audit.glob("*.jsonl")) / 1e6
    generate_dev_issuer(var / "dev")
    token = mint_dev_token(var / "dev", sub="bench", roles=["auditor"], ttl_s=7200, now=time.time())
    index = base / "cache" / "index.sqlite"
    fresh_index = not index.exists()
    port = free_ports(1)[0]
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ext_proc.cli.main", "console", "--audit", str(audit),
                             "--var-dir", str(var), "--listen", f"127.0.0.1:{port}", "--index", str(index)],
                            cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 3600)   # the index is brought up to the store before the server listens
        build_s = time.perf_counter() - t
        h = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=60) as c:
            urls = filtered_urls(random.Random(1), a.pages)
            for u in urls[:20]:
                c.get(u)   # warm the page cache and SQLite's
            lat, count_lat = [], []
            for u in urls:
                t0 = time.perf_counter()
                r = c.get(u)
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, (u, r.status_code)
                # The page's match count, which the browser loads right after it (htmx).
                t0 = time.perf_counter()
                r = c.get(u.replace("/search?", "/search/count?", 1))
                count_lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200 and "matching" in r.text, (u, r.status_code)
            t0 = time.perf_counter()
            r = c.get("/export.csv?subject=alice&decision=deny")
            export_ms = (time.perf_counter() - t0) * 1000
            export_rows = r.text.count("\n") - 1
            # The overview: whole-index aggregates, and the verification of the whole store starts
            # in a child process (the page waits for it at most 5 s, then says it is running).
            t0 = time.perf_counter()
            r = c.get("/")
            overview_first_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            c.get("/")
            overview_again_ms = (time.perf_counter() - t0) * 1000
    finally:
        proc.terminate()
        proc.wait(30)
    lat.sort()
    count_lat.sort()
    result = {"records": records, "store_mb": round(size_mb, 1),
              "index_build_s" if fresh_index else "startup_with_existing_index_s": round(build_s, 1),
              "index_mb": round(index.stat().st_size / 1e6, 1), "pages": len(lat),
              "filtered_page_ms": {"p50": round(statistics.median(lat), 1),
                                   "p95": round(lat[int(len(lat) * 0.95) - 1], 1), "max": round(lat[-1], 1)},
              "match_count_ms": {"p50": round(statistics.median(count_lat), 1),
                                 "p95": round(count_lat[int(len(count_lat) * 0.95) - 1], 1),
                                 "max": round(count_lat[-1], 1)},
              "overview_first_view_ms": round(overview_first_ms, 1),
              "overview_again_ms": round(overview_again_ms, 1),
              "export_csv_ms": round(export_ms, 1), "export_rows": export_rows}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
