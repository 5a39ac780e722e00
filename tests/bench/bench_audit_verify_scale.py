"""`make bench-audit-scale`: verification at scale. Generates a store of N records (default
1,000,000 of ~1 KB; --pad for larger records), then runs `verify_store` in a fresh process per
run and reports records/s and peak resident memory (ru_maxrss of that process and its workers).
Usage: bench_audit_verify_scale.py [--records N] [--pad BYTES] [--segments K] [--jobs J] [--dir D]
[--code DIR: import ledgergate from DIR instead, to compare with another checkout]."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RUN = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from ext_proc.audit import verify
t = time.perf_counter()
if hasattr(verify, "verify_store"):
    rep = verify.verify_store(sys.argv[2], jobs=int(sys.argv[3]))
else:
    rep = verify.verify_dir(sys.argv[2], jobs=int(sys.argv[3]))
el = time.perf_counter() - t
me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
print(rep.records, el, rep.ok, me.ru_maxrss, ch.ru_maxrss, cpu)
"""


def generate(directory: Path, records: int, pad: int, segments: int) -> None:
    import base64

    from ext_proc.audit.canonical import canonical_json
    from ext_proc.audit.chain import ChainWriter
    from ext_proc.audit.log import load_or_create_signing_key
    from ext_proc.audit.merkle import MerkleFrontier, leaf_hash

    directory.mkdir(parents=True, exist_ok=True)
    key = load_or_create_signing_key(directory.parent / "bench-k.pem")
    per = records // segments
    for s in range(segments):
        w = ChainWriter(key, "bench", f"20260101T0000{s:02d}Z-{s:08x}")
        front = MerkleFrontier()
        with open(directory / f"bench-{w.segment_id}.jsonl", "wb") as f:
            rec = w.genesis(0)
            f.write(canonical_json(rec) + b"\n")
            front.append(leaf_hash(bytes.fromhex(rec["hash"])))
            for i in range(per - 2):
                rec, line = w.seal_line({"kind": "decision", "request_id": f"r{s}-{i}", "decision": {"outcome": "permit"},
                                         "identity": {"subject": "alice", "roles": ["analyst"]}, "pad": "x" * pad}, i)
                f.write(line + b"\n")
                front.append(leaf_hash(bytes.fromhex(rec["hash"])))
            _, line = w.seal_line({"kind": "checkpoint", "tree_size": front.size,
                                   "root": base64.b64encode(front.root()).decode()}, per)
            f.write(line + b"\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--pad", type=int, default=700)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--jobs", type=int, action="append")
    p.add_argument("--dir")
    p.add_argument("--code", default=str(ROOT))
    a = p.parse_args()
    d = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="lg-bench-verify-")) / "audit"
    if not d.exists():
        t = time.perf_counter()
        generate(d, a.records, a.pad, a.segments)
        print(f"generated {a.records} records in {time.perf_counter() - t:.0f} s: "
              f"{sum(f.stat().st_size for f in d.glob('*.jsonl')) / 1e6:.0f} MB in {d}")
    for jobs in a.jobs or [1, 2]:
        out = subprocess.run([sys.executable, "-c", RUN, a.code, str(d), str(jobs)],
                             capture_output=True, text=True, check=True).stdout.split()
        n, secs, ok, own, kids, cpu = int(out[0]), float(out[1]), out[2], int(out[3]), int(out[4]), float(out[5])
        # CPU seconds (this process and its workers, start-up included) are the fairer comparison
        # on a shared machine, where wall-clock rates move with other load.
        print(f"verify jobs={jobs}: {n / secs:,.0f} records/s ({n} records, {secs:.1f} s, ok={ok}); "
              f"{cpu / n * 1e6:.0f} us CPU per record; peak RSS {own / 1024:.0f} MB "
              f"(workers {kids / 1024:.0f} MB each at most)")


if __name__ == "__main__":
    main()
