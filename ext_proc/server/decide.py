"""The request decision as the server runs it: the pure pipeline (pipeline/request.py, then the
steps after the policy) on the event loop or, for large bodies, on the heavy lane; then the
rate-limit counters (the only I/O) and admission. Nothing here is committed or released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

import structlog

from ext_proc.identity import Identity
from ext_proc.pipeline.admission import admit, needs_admission
from ext_proc.pipeline.budget import BudgetedClassifier, ScanPool
from ext_proc.pipeline.envelope import Envelope, refuse_unrewritable
from ext_proc.pipeline.multiplex import FailoverChain, Translated, choose_route
from ext_proc.pipeline.request import RequestHead, decide_request, reject_unprocessable
from ext_proc.pipeline.verdict import Verdict, annotated
from ext_proc.ratelimit.limits import Reservation

if TYPE_CHECKING:
    from ext_proc.server.runtime import Runtime
    from ext_proc.server.tracing import AnyExchangeTrace

T = TypeVar("T")

log = structlog.get_logger("ledgergate.server")

# Bodies from this size up are decided on one worker thread, one at a time, off the event loop,
# and their large texts are classified in a separate process (ScanPool): a caller sending large
# or pathological bodies then delays other large bodies, never the small requests the loop
# decides inline. A thread alone is not enough: the classifier's checks are Python and hold the
# GIL the loop needs (docs/benchmarks.md, bench-abuse).
HEAVY_BODY_BYTES = 64 * 1024
# Large bodies waiting for (or in) the lane: past this a new one is refused at once with a 503
# (inspection would outlast Envoy's message timeout; the caller may retry) rather than queued.
HEAVY_QUEUE_MAX = 8


class HeavyLane:
    """One thread for the decisions on large bodies (started on first use), and how many are
    waiting for it. Used from the event loop only."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.pending = 0
        self.scan_pool = ScanPool(workers=1)

    async def run(self, fn: Callable[[], T]) -> T:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledgergate-inspect")
        loop = asyncio.get_running_loop()
        job = self.executor.submit(fn)
        self.pending += 1
        # Counted until the work is really over (or cancelled before it started): a caller that
        # disconnects while its body is being inspected still occupies the lane.
        job.add_done_callback(lambda _job: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(job, loop=loop)

    def _release(self) -> None:
        self.pending -= 1


heavy_lane = HeavyLane()


@dataclass(frozen=True)
class Decided:
    """The verdict to commit, how the request leaves, and what admission reserved."""

    verdict: Verdict
    multiplexed: Translated | FailoverChain | None = None
    reservation: Reservation | None = None
    refusal_headers: Mapping[str, str] = field(default_factory=dict)
    answer_headers: Mapping[str, str] = field(default_factory=dict)


async def decide(rt: Runtime, head: RequestHead, identity: Identity, envelope: Envelope | None,
                 body: bytes | None, has_findings: Callable[[str], bool], trace: AnyExchangeTrace) -> Decided:
    policy = rt.policies.current
    started = time.perf_counter()
    trace.begin("decide")
    heavy = body is not None and len(body) >= HEAVY_BODY_BYTES
    budget = BudgetedClassifier(rt.classifier_for(policy), max_bytes=rt.config.max_inspection_bytes,
                                max_candidates=rt.config.max_inspection_candidates,
                                pool=heavy_lane.scan_pool if heavy else None, custom_terms=policy.dictionaries)

    def run() -> Verdict:   # the time of the decision is read when it is taken (after any wait)
        return decide_request(head, identity, body, policy=policy, classifier=budget,
                              hash_key=rt.hash_key, now_ms=int(rt.clock() * 1000),
                              max_body_bytes=rt.config.max_body_bytes,
                              envelope_segments=envelope.segments if envelope else ())
    try:
        if heavy and heavy_lane.pending >= HEAVY_QUEUE_MAX:
            verdict = reject_unprocessable(head, identity, 503, "inspection_busy",
                                           "too many large requests are waiting for inspection; retry later",
                                           int(rt.clock() * 1000), body, policy, classifier=rt.classifier_for(policy))
        elif heavy:
            verdict = await heavy_lane.run(run)
        else:
            verdict = run()
    except Exception as exc:  # noqa: BLE001 - any pipeline failure is a fail-closed denial
        log.error("pipeline_error", request_id=head.request_id, error_type=type(exc).__name__)
        verdict = reject_unprocessable(head, identity, 503, "processing_error",
                                       "the request could not be inspected; it was not forwarded",
                                       int(rt.clock() * 1000), body, policy, classifier=rt.classifier_for(policy))
    verdict = annotated(verdict, inspection=budget.to_record())
    if envelope is not None:
        verdict = refuse_unrewritable(annotated(verdict, envelope=envelope.to_record(has_findings)),
                                      envelope, head.provider)
    choice = choose_route(verdict, body, head.surface.name if head.surface else None, head.provider,
                          rt.config.multiplex_models)
    rt.metrics.phase("decide", time.perf_counter() - started)
    trace.end("decide")
    decided = Decided(choice.verdict, choice.multiplexed)
    if needs_admission(decided.verdict):
        with trace.phase("ratelimit"):
            admission = await rt.reserve(head, decided.verdict)
        admitted = admit(decided.verdict, admission, head.provider)
        decided = Decided(admitted.verdict, choice.multiplexed, admitted.reservation, admitted.refusal_headers,
                          admitted.answer_headers)
    if rt.capture_key is not None and body:
        capture = rt.capture_key.seal(body, head.request_id.encode())
        decided = replace(decided, verdict=annotated(decided.verdict, capture=capture))
    rt.metrics.decision(decided.verdict.outcome, head.route_record()["surface"])
    return decided
