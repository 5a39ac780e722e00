"""Misbehaving ext_proc processors for the fail-closed tests (run as `python -m tests.fault.processors`).

raise  - aborts the stream with a gRPC error when the request body arrives
hang   - never answers the request body
slow   - answers headers, then sleeps on the body (the test kills it with SIGKILL meanwhile)
return - returns cleanly (ends the stream) when the body arrives: the Envoy behaviour ledgergate
         must never trigger, shown here so the test documents it
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc


class Misbehaving(pb_grpc.ExternalProcessorServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def Process(self, request_iterator, context):
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                if self.mode == "raise":
                    await context.abort(grpc.StatusCode.INTERNAL, "boom")
                if self.mode == "return":
                    return
                await asyncio.sleep(3600)
            else:
                return


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True, choices=["raise", "hang", "slow", "return"])
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Misbehaving(a.mode), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
