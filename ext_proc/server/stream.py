"""The one ext_proc loop, for the router-level exchange (server/exchange.py) and the upstream-level
attempt (server/upstream.py): each message goes to its stage's handler, the replies go back, and
any failure is mapped by the stage to an error answer or a gRPC error.

Fail closed: the loop never simply returns while Envoy still waits (a handler that returns makes
Envoy forward the rest of the exchange without the processor, shared/notes/ext_proc.md). It ends
after an immediate response (Envoy ends the stream then), when Envoy closes the stream, or by
aborting the RPC.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.replies import is_immediate

Replies = list[pb.ProcessingResponse] | AsyncIterator[pb.ProcessingResponse]

# The gRPC metadata Envoy's upstream ext_proc filter sends (envoy/filters/ext_proc.yaml): the
# stream is an upstream attempt of a failover chain, not a request.
UPSTREAM_STAGE = ("x-ledgergate-stage", "upstream")

# ext_proc message kind -> the stage's handler for it.
HANDLERS = {
    "request_headers": "on_request_headers",
    "request_body": "on_request_body",
    "request_trailers": "on_request_trailers",
    "response_headers": "on_response_headers",
    "response_body": "on_response_body",
    "response_trailers": "on_response_trailers",
}


class ProtocolViolation(Exception):
    """Envoy sent a message this processing mode never produces."""


@dataclass(frozen=True)
class Failure:
    """How a stage answers a failure: REPLY (an error answer, when nothing was released yet)
    or the gRPC STATUS and DETAIL the stream is aborted with. ERROR is what the stage's end
    records."""

    error: str
    reply: pb.ProcessingResponse | None = None
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    detail: str = "ledgergate processing error"


class Stage(Protocol):
    """One ext_proc stream's state. Handlers (named in HANDLERS) take the message and return
    their replies as a list (or a coroutine of one), or as an async iterator when the replies of
    one message go out while it is still being worked on (response bodies)."""

    def failure(self, exc: Exception) -> Failure: ...

    def finish(self, error: str | None) -> Awaitable[None]: ...

    # Optional: `finish_now(error) -> bool` ends the stream without waiting when there is
    # nothing to wait for (True), sparing the task `finish` is shielded in (Exchange has it).


async def serve(stage: Stage, requests: AsyncIterator[pb.ProcessingRequest],
                context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
    error: str | None = None
    received = requests.__aiter__()
    try:
        async for req in received:
            kind = req.WhichOneof("request")
            handler = getattr(stage, HANDLERS.get(kind or "", ""), None)
            if handler is None:
                raise ProtocolViolation(f"unexpected message {kind!r}")
            out = handler(req)
            if hasattr(out, "__aiter__"):
                async for reply in out:
                    yield reply
                    if is_immediate(reply):
                        await _close(received)
                        return   # Envoy ends the stream after an immediate response.
                continue
            # A list (or a coroutine of one): iterated here, without an async generator per message.
            for reply in (await out if inspect.isawaitable(out) else out):
                yield reply
                if is_immediate(reply):
                    await _close(received)
                    return
    except asyncio.CancelledError:
        error = "cancelled"
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is answered or aborts: never a bare return
        failed = stage.failure(exc)
        error = failed.error
        if failed.reply is not None:
            yield failed.reply
            return
        await context.abort(failed.status, failed.detail)
    finally:
        # Shielded: when Envoy resets a finished stream, gRPC cancels this handler, and the await
        # below is cancelled again while the stage's end (an outcome commit) goes on. A stage
        # with nothing to wait for ends at once (no task: a cache hit's or a refusal's end).
        now = getattr(stage, "finish_now", None)
        if now is None or not now(error):
            await asyncio.shield(stage.finish(error))


async def _close(received: AsyncIterator[pb.ProcessingRequest]) -> None:
    """Close the request side left unfinished by an immediate response here (gRPC's receiver is
    an async generator): otherwise the event loop's finaliser closes it later in a task of its own."""
    aclose = getattr(received, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - the answer is out; closing the request side is housekeeping
            pass
