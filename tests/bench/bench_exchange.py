"""One full exchange of `make bench`'s full pipeline, in-process (no Envoy, no gRPC transport): the
five ext_proc messages Envoy sends for a non-streamed chat answer (request headers, request body,
response headers, the answer's body, the empty end-of-stream chunk) driven through the servicer
on the default policy, the dev issuer and the file audit sink, with the bench's own prompt
(tests/bench/bench_e2e.py: 4 KB with 18 e-mail addresses to redact) and answer (tests/bench/wrk.py).

    python tests/bench/bench_exchange.py [--n 300] [--profile cprofile|pyinstrument] [--json OUT]

Reports process CPU (every thread: the loop and the audit writer) per exchange after the audit
sink has committed everything. Runs against whatever `ext_proc` sits two folders up, so the same
file measures two checkouts side by side. Under `valgrind --tool=callgrind` (`--n 50 --warm 5`)
the instruction count of the measured exchanges is noise-free; `--only decide` narrows it to the
pure request decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from ext_proc.cli.devmaterial import ensure_dev_material  # noqa: E402
from ext_proc.identity.dev import mint_dev_token  # noqa: E402
from ext_proc.server.config import load_config  # noqa: E402
from ext_proc.server.runtime import Runtime  # noqa: E402
from ext_proc.server.servicer import Servicer  # noqa: E402
from tests.bench.bench_e2e import chat_body  # noqa: E402
from tests.bench.wrk import FIXED_COMPLETION  # noqa: E402


def _thread_cpu() -> dict[str, tuple[float, float]]:
    """utime and stime (seconds) of each of this process's threads, by thread name and id."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            parts = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"{comm}/{task.name}"] = (int(parts[11]) / tick, int(parts[12]) / tick)
    return out


def _callgrind(on: bool) -> None:
    """Under `valgrind --tool=callgrind --instr-atstart=no`, instrument only the measured
    exchanges (callgrind_control toggles this process); elsewhere a no-op."""
    import os
    import subprocess
    if os.environ.get("LG_CALLGRIND") == "1":
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL)


class _Context:
    def invocation_metadata(self) -> tuple:
        return ()

    async def abort(self, code, details):  # pragma: no cover - a failing exchange is a bench error
        raise RuntimeError(f"aborted: {code} {details}")


def _headers(pairs: dict[str, str]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]))


def exchange(token: str, request_id: str) -> list[pb.ProcessingRequest]:
    attrs = struct_pb2.Struct()
    attrs.update({"request.id": request_id})
    head = pb.ProcessingRequest(request_headers=_headers({
        ":method": "POST", ":path": "/v1/chat/completions", ":authority": "127.0.0.1", ":scheme": "http",
        "authorization": f"Bearer {token}", "content-type": "application/json", "user-agent": "wrk",
        "x-request-id": request_id}))
    head.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return [head,
            pb.ProcessingRequest(request_body=pb.HttpBody(body=chat_body(False), end_of_stream=True)),
            pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json",
                                                            "content-length": str(len(FIXED_COMPLETION))})),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=FIXED_COMPLETION.encode(), end_of_stream=False)),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=b"", end_of_stream=True))]


async def drive(servicer: Servicer, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async def it():
        for m in msgs:
            yield m
    return [r async for r in servicer.Process(it(), _Context())]


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-exchange-"))
    var = tmp / "var"
    ensure_dev_material(var)
    config = load_config(None, base_dir=tmp, overrides={
        "policy": {"path": str(ROOT / "policies" / "default.yaml")}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    token = mint_dev_token(var / "dev", sub="bench", roles=["developer"], tenant="acme", now=time.time())
    servicer = Servicer(rt)
    try:
        for i in range(args.warm):
            replies = await drive(servicer, exchange(token, f"warm-{i}"))
        if replies[-1].WhichOneof("response") != "response_body" or len(replies) < 4:
            raise SystemExit(f"unexpected exchange: {[r.WhichOneof('response') for r in replies]}")
        await asyncio.sleep(0.3)
        prof = None
        if args.profile == "cprofile":
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        elif args.profile == "pyinstrument":
            sys.path.insert(0, "/tmp/pyi")
            from pyinstrument import Profiler
            prof = Profiler(interval=0.0005, async_mode="disabled")
            prof.start()
        per: list[float] = []
        _callgrind(True)
        threads0 = _thread_cpu()
        cpu0 = time.process_time()
        for i in range(args.n):
            t = time.process_time()
            await drive(servicer, exchange(token, f"bench-{i}"))
            per.append((time.process_time() - t) * 1000)
        loop_cpu = time.process_time() - cpu0
        await asyncio.sleep(0.3)   # the writer thread commits the last group
        _callgrind(False)
        total_cpu = time.process_time() - cpu0
        threads1 = _thread_cpu()
        by_thread = {name: round((threads1[name][0] - threads0.get(name, (0, 0))[0]) * 1000 / args.n, 3)
                     for name in threads1}
        by_thread_sys = {name: round((threads1[name][1] - threads0.get(name, (0, 0))[1]) * 1000 / args.n, 3)
                         for name in threads1}
        if args.profile == "cprofile":
            import pstats
            prof.disable()
            st = pstats.Stats(prof)
            st.sort_stats("cumulative").print_stats(45)
            st.sort_stats("tottime").print_stats(35)
            print("total calls:", st.total_calls)
        elif args.profile == "pyinstrument":
            prof.stop()
            print(prof.output_text(unicode=False, color=False, show_all=False))
    finally:
        await rt.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"exchanges": args.n, "median_ms_loop_thread_window": round(statistics.median(per), 3),
           "cpu_ms_per_exchange_all_threads": round(total_cpu * 1000 / args.n, 3),
           "cpu_ms_per_exchange_in_window": round(loop_cpu * 1000 / args.n, 3),
           "user_ms_per_exchange_by_thread": by_thread, "sys_ms_per_exchange_by_thread": by_thread_sys}
    print(json.dumps(out))
    return out


def main_decide(args: argparse.Namespace) -> None:
    """The pure request decision on the bench's body, N times (for callgrind)."""
    from ext_proc.classify import Classifier
    from ext_proc.identity import Identity
    from ext_proc.pipeline.request import RequestHead, decide_request
    from ext_proc.policy import load_policy
    from ext_proc.providers import match_surface
    policy = load_policy(ROOT / "policies" / "default.yaml")
    classifier = Classifier()
    ident = Identity(subject="bench", issuer="dev", auth_method="jwt", roles=("developer",), groups=(),
                     tenant="acme", scopes=(), actor=(), credential_id="c", expires_at=None)
    head = RequestHead(request_id="r", method="POST", path="/v1/chat/completions", headers={}, attributes={},
                       received_ms=0, surface=match_surface("POST", "/v1/chat/completions"))
    if args.body == "bench":
        body = chat_body(False)
    else:
        from tests.bench.bench_inspect import bodies
        body = bodies()[args.body]
    for _ in range(args.warm):
        decide_request(head, ident, body, policy=policy, classifier=classifier, hash_key=b"k" * 32,
                       now_ms=1, max_body_bytes=4 << 20)
    _callgrind(True)
    t = time.process_time()
    for _ in range(args.n):
        decide_request(head, ident, body, policy=policy, classifier=classifier, hash_key=b"k" * 32,
                       now_ms=1, max_body_bytes=4 << 20)
    _callgrind(False)
    print(json.dumps({"decisions": args.n, "cpu_ms_per_decision": round((time.process_time() - t) * 1000 / args.n, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warm", type=int, default=30)
    ap.add_argument("--profile", choices=("cprofile", "pyinstrument"))
    ap.add_argument("--only", choices=("exchange", "decide"), default="exchange")
    ap.add_argument("--body", default="bench",
                    help="with --only decide: 'bench' (make bench's prompt) or a tests/bench/bench_inspect.py body name")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.only == "decide":
        main_decide(args)
        return
    out = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
