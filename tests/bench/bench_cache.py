"""Response cache latency through the real Envoy, four paths in one run, requests interleaved
one at a time (so the busy machine's noise falls on all of them alike):

  envoy - Envoy alone (ext_proc filter removed) -> mock provider
  miss  - Envoy + ledgergate, a cacheable request not yet cached (forwarded, then filled)
  hit   - Envoy + ledgergate, the same request again: answered from the cache, no provider
  floor - Envoy + a processor that does nothing but a hit's ext_proc exchange (request headers ->
          continue, request body -> the same answer as an immediate response), on the same gRPC
          server as ledgergate: what any Python ext_proc hit costs before ledgergate does anything
  io_floor - the floor plus only the I/O every hit must do, with ledgergate's own code for it:
          a Redis GET of the entry and both of a real hit's records sealed into a chain and made
          durable (AuditLog.begin_together, file sink, write + fsync) before the answer goes. No
          identity, classification or policy: a lower bound for any hit that keeps the promises

With --baseline DIR, a second ledgergate run from another checkout (older code) takes part in
the same rounds (miss_base, hit_base), the two taking turns at going first: an A/B in the same
minutes.

Then, to be robust to a shared machine, process CPU: blocks of hits alone (and of the floor and
of Envoy alone), 4 per path, alternated, with the CPU time (utime + stime, /proc) each
ledgergate worker, the floor processor and the Envoys spent per request, and ledgergate's own
phase histogram per hit.

Plus the Redis memory of one entry (MEMORY USAGE). Usage:
  .venv/bin/python tests/bench/bench_cache.py [--requests 300] [--backend redis|memory]
      [--baseline DIR] [--out FILE]
Only 127.0.0.1 is contacted; the Redis keys use a unique prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import redis
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests import support  # noqa: E402
from tests.bench.bench_e2e import start_envoy_variant  # noqa: E402
from tests.bench.loadgen import Conn, build_request  # noqa: E402

PROMPT = ("Summarise the attached quarterly figures for the operations team in three bullet points; "
          "keep it short and neutral. ") * 3


def body(marker: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": f"{PROMPT} [{marker}]"}]}).encode()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


class HitFloor(pb_grpc.ExternalProcessorServicer):
    """A hit's ext_proc exchange and nothing else: headers -> continue, body -> ANSWER."""

    def __init__(self, answer: bytes) -> None:
        self.reply = pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
            status={"code": 200}, body=answer, details="served_from_cache",
            headers=pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"))])))

    async def Process(self, request_iterator, context):
        async for req in request_iterator:
            if req.WhichOneof("request") == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            else:
                yield self.reply
                return


class HitIOFloor(HitFloor):
    """The floor plus a hit's unavoidable I/O: the store GET, then both records sealed and durable."""

    def __init__(self, answer: bytes, store_key: str, bodies: list[dict], audit_dir: Path) -> None:
        super().__init__(answer)
        self.store_key, self.bodies, self.audit_dir = store_key, bodies, audit_dir
        self.redis = None
        self.audit = None

    async def start(self) -> None:
        from ext_proc.audit.chain import ChainWriter
        from ext_proc.audit.log import AuditLog, FileSink, load_or_create_signing_key
        from ext_proc.cache.store import RedisStore

        self.redis = RedisStore("redis://127.0.0.1:6379/0", prefix="")
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        chain = ChainWriter(load_or_create_signing_key(self.audit_dir / "key.pem"), "io-floor", uuid.uuid4().hex[:8])
        self.audit = AuditLog(FileSink(self.audit_dir), chain)
        await self.audit.start()

    async def Process(self, request_iterator, context):
        async for req in request_iterator:
            if req.WhichOneof("request") == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            else:
                if await self.redis.get(self.store_key) is None:   # ledgergate's own look-up (Entry decoded)
                    raise RuntimeError("the io floor's entry is gone")
                _records, durable = self.audit.begin_together(self.bodies)
                await durable
                yield self.reply
                return


async def serve_floor(port: int, answer: bytes, io: dict | None = None) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000), ("grpc.so_reuseport", 0)])
    servicer = HitFloor(answer)
    if io is not None:
        servicer = HitIOFloor(answer, io["store_key"], io["bodies"], Path(io["audit_dir"]))
        await servicer.start()
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def measure(envoy_port: int, floor_ports: dict[str, int], stacks: dict[str, tuple[int, str]],
                  n: int) -> dict[str, list[float]]:
    """One request at a time, interleaved: envoy, the floors (FLOOR_PORTS: name -> Envoy port),
    then a miss and a hit of each ledgergate (STACKS: name -> (port, token)), the ledgergates in
    turn first and second."""
    envoy = Conn("127.0.0.1", envoy_port)
    floors = {name: Conn("127.0.0.1", port) for name, port in floor_ports.items()}
    conns = {name: (Conn("127.0.0.1", port), {"authorization": f"Bearer {token}"}) for name, (port, token) in stacks.items()}
    hit_raw = {name: build_request("/v1/chat/completions", body("fixed"), auth) for name, (_, auth) in conns.items()}
    out: dict[str, list[float]] = {"envoy": [], **{name: [] for name in floors}}
    for name in stacks:
        out[f"miss{name}"], out[f"hit{name}"] = [], []

    async def round_(record: bool, flip: bool) -> None:
        s, _, t = await envoy.request(hit_raw[next(iter(stacks))])
        assert s == 200, s
        if record:
            out["envoy"].append(t)
        for name, conn in floors.items():
            s1, _, t1 = await conn.request(hit_raw[next(iter(stacks))])
            assert s1 == 200, (name, s1)
            if record:
                out[name].append(t1)
        # The trees take turns at going first (no position in the round favours one of them).
        for name, (conn, auth) in (reversed(list(conns.items())) if flip else conns.items()):
            s2, _, t2 = await conn.request(build_request("/v1/chat/completions", body(uuid.uuid4().hex), auth))
            s3, _, t3 = await conn.request(hit_raw[name])
            assert s2 == s3 == 200, (name, s2, s3)
            if record:
                out[f"miss{name}"].append(t2)
                out[f"hit{name}"].append(t3)
    for i in range(20):                              # warm up every path
        await round_(False, i % 2 == 1)
    for i in range(n):
        await round_(True, i % 2 == 1)
    return out


def fill(lg_port: int, token: str) -> bytes:
    """Fill the entry the hits read; returns the answer a hit gets (checked to be a hit)."""
    def post() -> tuple[bytes, str | None]:
        req = urllib.request.Request(f"http://127.0.0.1:{lg_port}/v1/chat/completions", data=body("fixed"),
                                     headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read(), r.headers.get("x-ledgergate-cache")
    post()
    for _ in range(50):
        answer, cache = post()
        if cache == "hit":
            return answer
        time.sleep(0.1)
    raise RuntimeError("the entry was not filled")


def last_hit_records(stack_dir: Path) -> list[dict]:
    """The bodies (seal fields left out) of the last cache hit's decision and outcome records in
    the stack's audit segments: what the io floor seals per request."""
    from ext_proc.audit.chain import SEAL_FIELDS

    lines = [json.loads(line) for f in sorted(stack_dir.rglob("*.jsonl")) for line in f.read_text().splitlines() if line]
    for i in range(len(lines) - 1, 0, -1):
        if (lines[i - 1].get("cache") or {}).get("result") == "hit":
            return [{k: v for k, v in rec.items() if k not in SEAL_FIELDS} for rec in lines[i - 1:i + 1]]
    raise RuntimeError("no cache hit in the stack's audit log")


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is PID."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return out


async def cpu_per_request(port: int, raw: bytes, n: int, pids: dict[str, int]) -> dict[str, float]:
    """Process CPU milliseconds per request of each of PIDS over N requests sent one at a time."""
    conn = Conn("127.0.0.1", port)
    for _ in range(20):
        await conn.request(raw)
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    for _ in range(n):
        s, _, _ = await conn.request(raw)
        assert s == 200, s
    return {k: round(1000 * (cpu_seconds(p) - before[k]) / n, 3) for k, p in pids.items()}


def phase_totals(metrics_port: int) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per ledgergate_phase_seconds phase, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^ledgergate_phase_seconds_(sum|count)\{phase="([a-z_]+)"\} ([0-9.e+-]+)$', text, re.MULTILINE):
        out.setdefault(m.group(2), [0.0, 0.0])[("sum", "count").index(m.group(1))] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def start_stack_from(repo: Path, tmp: Path, *extra: str):
    """The local stack (ledgergate up) run from the checkout REPO (an A/B against older code)."""
    saved = support.REPO
    support.REPO = repo
    try:
        return support.start_stack(tmp, *extra)
    finally:
        support.REPO = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--backend", choices=["redis", "memory"], default="redis")
    ap.add_argument("--baseline", type=Path, help="a checkout of older code: run it too, interleaved (A/B), "
                                                   "its paths named miss_base / hit_base")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--floor-processor", type=int, help=argparse.SUPPRESS)   # internal: serve the floor
    ap.add_argument("--floor-answer", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--floor-io", type=Path, help=argparse.SUPPRESS)          # internal: the io floor's setup
    args = ap.parse_args()
    if args.floor_processor:
        io = json.loads(args.floor_io.read_text()) if args.floor_io else None
        asyncio.run(serve_floor(args.floor_processor, args.floor_answer.read_bytes(), io))
        return
    prefix = f"lg:bench-cache:{uuid.uuid4().hex[:8]}:"
    r = redis.Redis(host="127.0.0.1", port=6379)
    trees = {"": REPO, **({"_base": args.baseline.resolve()} if args.baseline else {})}
    procs: list[subprocess.Popen] = []
    stacks: dict[str, support.Stack] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            for name, tree in trees.items():
                sub = tmp / f"stack{name}"
                sub.mkdir()
                cfg = sub / "ledgergate.yaml"
                cfg.write_text(json.dumps({
                    "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
                    "audit": {"sink": "file"},
                    "cache": {"backend": args.backend, "prefix": f"{prefix}{name}:"}}))
                stacks[name] = start_stack_from(tree, sub, "--config", str(cfg))
            first = stacks[""]
            tokens = {name: st.token() for name, st in stacks.items()}
            answer = fill(first.port, tokens[""])
            for name, st in stacks.items():
                if name:
                    fill(st.port, tokens[name])
            (tmp / "answer").write_bytes(answer)
            floor_port, io_port = support.free_ports(2)
            procs.append(subprocess.Popen([sys.executable, __file__, "--floor-processor", str(floor_port),
                                           "--floor-answer", str(tmp / "answer")]))
            if args.backend == "redis":
                # The io floor reads a copy of the real entry and seals a real hit's two records.
                entry_key = next(iter(r.scan_iter(match=prefix + ":*")))
                io_key = f"{prefix}io-floor"
                r.set(io_key, r.get(entry_key))
                (tmp / "io.json").write_text(json.dumps({"store_key": io_key, "bodies": last_hit_records(tmp / "stack"),
                                                         "audit_dir": str(tmp / "io-floor-audit")}))
                procs.append(subprocess.Popen([sys.executable, __file__, "--floor-processor", str(io_port),
                                               "--floor-answer", str(tmp / "answer"), "--floor-io", str(tmp / "io.json")]))
            support.wait_port(floor_port)
            envoy_proc, envoy_port = start_envoy_variant(tmp, mock_port=first.mock_port, ext_ports=None)
            procs.append(envoy_proc)
            floor_envoy, floor_envoy_port = start_envoy_variant(tmp, mock_port=first.mock_port, ext_ports=[floor_port])
            procs.append(floor_envoy)
            floor_ports = {"floor": floor_envoy_port}
            if args.backend == "redis":
                support.wait_port(io_port)
                io_envoy, io_envoy_port = start_envoy_variant(tmp, mock_port=first.mock_port, ext_ports=[io_port])
                procs.append(io_envoy)
                floor_ports["io_floor"] = io_envoy_port
            phases0 = {name: phase_totals(st.metrics_port) for name, st in stacks.items()}
            lat = asyncio.run(measure(envoy_port, floor_ports,
                                      {name: (st.port, tokens[name]) for name, st in stacks.items()}, args.requests))
            phases1 = {name: phase_totals(st.metrics_port) for name, st in stacks.items()}
            # CPU per request, blocks of hits alone, alternated between the trees (4 blocks each).
            cpu: dict[str, dict[str, list[float]]] = {}
            raw = {name: build_request("/v1/chat/completions", body("fixed"), {"authorization": f"Bearer {tokens[name]}"})
                   for name in stacks}
            pids = {}
            for name, st in stacks.items():
                kids = children(st.proc.pid)
                pids[name] = {"ledgergate": next(p for p, cmd in kids if " serve " in cmd),
                              "envoy": next(p for p, cmd in kids if "envoy" in cmd)}
            block = max(50, args.requests // 4)
            for _ in range(4):
                for name, st in stacks.items():
                    for k, v in asyncio.run(cpu_per_request(st.port, raw[name], block, pids[name])).items():
                        cpu.setdefault(f"hit{name}", {}).setdefault(k, []).append(v)
                for k, v in asyncio.run(cpu_per_request(floor_envoy_port, raw[""], block,
                                                        {"floor_processor": procs[0].pid,
                                                         "envoy": floor_envoy.pid})).items():
                    cpu.setdefault("floor", {}).setdefault(k, []).append(v)
                if "io_floor" in floor_ports:
                    for k, v in asyncio.run(cpu_per_request(floor_ports["io_floor"], raw[""], block,
                                                            {"io_floor_processor": procs[1].pid,
                                                             "envoy": io_envoy.pid})).items():
                        cpu.setdefault("io_floor", {}).setdefault(k, []).append(v)
                for k, v in asyncio.run(cpu_per_request(envoy_port, raw[""], block, {"envoy": envoy_proc.pid})).items():
                    cpu.setdefault("envoy_alone", {}).setdefault(k, []).append(v)
            phases2 = {name: phase_totals(st.metrics_port) for name, st in stacks.items()}
            keys = list(r.scan_iter(match=prefix + ":*")) if args.backend == "redis" else []
            mem = [r.memory_usage(k) for k in keys[:50]]
            value_len = [r.strlen(k) for k in keys[:50]]
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            for st in stacks.values():
                st.stop()
            doomed = list(r.scan_iter(match=prefix + "*"))
            if doomed:
                r.delete(*doomed)
    res: dict = {name: {"p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
                        "mean_ms": statistics.fmean(xs) * 1000, "n": len(xs)} for name, xs in lat.items()}
    res["backend"] = args.backend
    # CPU milliseconds per request of each process: the median of the 4 blocks, and all of them.
    res["cpu_ms_per_request"] = {path: {proc: {"median": statistics.median(v), "blocks": v} for proc, v in d.items()}
                                 for path, d in cpu.items()}
    for name in stacks:
        p0, p1, p2 = phases0[name], phases1[name], phases2[name]
        # Per hit, from the blocks of hits alone: ledgergate's phase histogram (means).
        res[f"hit{name}_phases_mean_ms"] = {
            k: round(1000 * (p2[k][0] - p1.get(k, (0.0, 0.0))[0]) / (p2[k][1] - p1.get(k, (0.0, 0.0))[1]), 3)
            for k in p2 if p2[k][1] > p1.get(k, (0.0, 0.0))[1]}
        # The durable commits in the interleaved run: a hit's two records (cache_hit_commit) and
        # a miss's records one by one (audit_commit).
        for phase in ("cache_hit_commit", "audit_commit"):
            (s0, c0), (s1, c1) = p0.get(phase, (0.0, 0.0)), p1.get(phase, (0.0, 0.0))
            res[f"{phase}{name}_mean_ms"] = round(1000 * (s1 - s0) / (c1 - c0), 3) if c1 > c0 else None
        res[f"hit{name}_added_p50_ms_over_envoy"] = res[f"hit{name}"]["p50_ms"] - res["envoy"]["p50_ms"]
        res[f"miss{name}_added_p50_ms_over_envoy"] = res[f"miss{name}"]["p50_ms"] - res["envoy"]["p50_ms"]
        res[f"hit{name}_over_miss_p50_ratio"] = res[f"hit{name}"]["p50_ms"] / res[f"miss{name}"]["p50_ms"]
    for name in lat:
        if name.endswith("floor"):
            res[f"{name}_added_p50_ms_over_envoy"] = res[name]["p50_ms"] - res["envoy"]["p50_ms"]
    if mem:
        res["redis_entry_bytes_median"] = statistics.median(mem)
        res["redis_value_bytes_median"] = statistics.median(value_len)
        res["redis_entries_sampled"] = len(mem)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
