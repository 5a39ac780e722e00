"""The gRPC service: one ext_proc stream per HTTP request (router-level, server/exchange.py) or
per upstream attempt of a failover chain (server/upstream.py), both run by the one loop in
server/stream.py.

Fail closed: every path out of `Process` other than Envoy closing the stream aborts the RPC with
a gRPC error, because a handler that simply returns makes Envoy forward the rest of the request
without the processor (shared/notes/ext_proc.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.server.exchange import Exchange
from ext_proc.server.runtime import Runtime
from ext_proc.server.stream import UPSTREAM_STAGE, Stage, serve
from ext_proc.server.upstream import UpstreamAttempt


class Servicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated gRPC base: no type stubs
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        stage: Stage
        if UPSTREAM_STAGE in tuple(context.invocation_metadata() or ()):
            stage = UpstreamAttempt(self.rt)
        else:
            stage = Exchange(self.rt, context)
            self.rt.metrics.stream_started()
        async for reply in serve(stage, request_iterator, context):
            yield reply
