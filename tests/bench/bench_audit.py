"""`make bench-audit`: durable records per second with group commit (file and PostgreSQL sinks),
commit latency p50/p99 at a fixed rate, and verify throughput. Bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import open_audit_log  # noqa: E402

RECORD = {"kind": "decision", "request_id": "r", "decision": {"outcome": "permit", "matched": [{"rule": "x"}]},
          "identity": {"subject": "alice", "roles": ["analyst"]}, "pad": "x" * 3000}  # ~4 KB records


async def throughput(config: dict, key: str, n: int = 20000, concurrency: int = 500) -> float:
    log = open_audit_log(AuditConfig.from_dict({**config, "signing_key": key}), writer_id=f"bench-{uuid.uuid4().hex[:6]}")
    await log.start()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await log.commit(dict(RECORD, request_id=f"r{i}"))
    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    el = time.perf_counter() - t
    await log.close()
    return n / el


async def latency_at(config: dict, key: str, rate: float = 500, seconds: float = 5) -> tuple[float, float]:
    log = open_audit_log(AuditConfig.from_dict({**config, "signing_key": key}), writer_id=f"lat-{uuid.uuid4().hex[:6]}")
    await log.start()
    lat: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        await log.commit(dict(RECORD, request_id=f"l{i}"))
        lat.append((time.perf_counter() - t) * 1000)
    tasks, t0 = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await log.close()
    lat.sort()
    return statistics.median(lat), lat[int(0.99 * len(lat))]


VERIFY_SCRIPT = """
import sys, time
from ext_proc.audit.verify import verify_dir
t = time.perf_counter()
rep = verify_dir(sys.argv[1], jobs=int(sys.argv[2]))
print(rep.records, time.perf_counter() - t, rep.ok)
"""


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-audit-"))
    key = str(tmp / "k.pem")
    file_cfg = {"sink": "file", "dir": str(tmp / "audit")}
    print(f"file sink: {asyncio.run(throughput(file_cfg, key)):.0f} durable records/s (4 KB, concurrency 500)")
    p50, p99 = asyncio.run(latency_at(file_cfg, key))
    print(f"file sink: commit latency at 500 records/s p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    # Verification runs as an auditor runs it: a fresh single-threaded process (the CLI's shape),
    # timed inside so interpreter start-up is not counted.
    for jobs in (1, os.cpu_count() or 1):
        out = subprocess.run([sys.executable, "-c", VERIFY_SCRIPT, str(tmp / "audit"), str(jobs)],
                             capture_output=True, text=True, check=True).stdout.split()
        records, seconds, ok = int(out[0]), float(out[1]), out[2]
        print(f"verify ({jobs} process{'es' if jobs > 1 else ''}): {records / seconds:.0f} records/s "
              f"({records} records, ok={ok})")
    table = f"lg_bench_{uuid.uuid4().hex[:8]}"
    pg_cfg = {"sink": "postgres", "dsn": "postgresql://postgres@127.0.0.1:5432/test", "table": table}
    try:
        print(f"postgres sink: {asyncio.run(throughput(pg_cfg, key, n=5000)):.0f} durable records/s")
        p50, p99 = asyncio.run(latency_at(pg_cfg, key, seconds=3))
        print(f"postgres sink: commit latency at 500 records/s p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    except Exception as exc:  # noqa: BLE001
        print(f"postgres sink: skipped ({type(exc).__name__})")
    finally:
        try:
            import psycopg
            with psycopg.connect(pg_cfg["dsn"], autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
                c.execute(f"DROP FUNCTION IF EXISTS {table}_append_only() CASCADE")
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    main()
