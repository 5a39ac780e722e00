"""A cache hit's two audit records, committed the old way (two commits started together,
`asyncio.gather`) against one `commit_together`, in one process on one file sink, alternated
(A, B, A, B ...) so the shared disk's and CPU's noise falls on both: durable writes (fsyncs) per
hit and the commit latency. Records are the size of a real decision (~3 KB).
Usage: .venv/bin/python tests/bench/bench_hit_commit.py [--hits 300] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ext_proc.audit.config import AuditConfig  # noqa: E402
from ext_proc.audit.log import open_audit_log  # noqa: E402

PAD = "x" * 3000


async def run(directory: Path, hits: int, rounds: int) -> dict:
    log = open_audit_log(AuditConfig.from_dict({**{"dir": str(directory)}, "signing_key": str(directory / "k.pem")}), writer_id="bench")
    await log.start()
    out: dict[str, dict[str, list[float]]] = {"two_commits": {"p50_ms": [], "fsyncs_per_hit": []},
                                              "commit_together": {"p50_ms": [], "fsyncs_per_hit": []}}

    async def two(i: int) -> None:
        await asyncio.gather(log.commit({"kind": "decision", "request_id": f"a{i}", "pad": PAD}),
                             log.commit({"kind": "outcome", "request_id": f"a{i}"}))

    async def together(i: int) -> None:
        await log.commit_together([{"kind": "decision", "request_id": f"b{i}", "pad": PAD},
                                   {"kind": "outcome", "request_id": f"b{i}"}])
    try:
        for _ in range(rounds):
            for name, hit in (("two_commits", two), ("commit_together", together)):
                lat, b0 = [], log.batches
                for i in range(hits):
                    t0 = time.perf_counter()
                    await hit(i)
                    lat.append((time.perf_counter() - t0) * 1000)
                out[name]["p50_ms"].append(round(statistics.median(lat), 3))
                out[name]["fsyncs_per_hit"].append(round((log.batches - b0) / hits, 3))
    finally:
        await log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hits", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lg-hit-commit-", dir=REPO / "var" if (REPO / "var").is_dir() else None) as d:
        print(json.dumps(asyncio.run(run(Path(d), args.hits, args.rounds)), indent=1))


if __name__ == "__main__":
    main()
