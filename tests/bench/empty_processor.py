"""The plumbing floor for `make bench`: an ext_proc processor with ledgergate's gRPC setup and
processing modes that inspects nothing. Request body BUFFERED -> continue; response body
FULL_DUPLEX_STREAMED -> every chunk echoed back as it came.

--response-body per-response (the A/B of issue 23, with the filter's response body mode BUFFERED,
see tests/bench/bench_modes.py): a JSON answer stays BUFFERED (one body message, answered with
a plain BodyResponse); an SSE answer is switched at its response headers by `mode_override` to
FULL_DUPLEX_STREAMED and echoed like the default."""

from __future__ import annotations

import argparse
import asyncio

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

STREAM_OVERRIDE = pm.ProcessingMode(response_body_mode=pm.ProcessingMode.FULL_DUPLEX_STREAMED,
                                    response_trailer_mode=pm.ProcessingMode.SEND)


def _is_sse(headers: pb.HttpHeaders) -> bool:
    return any(h.key == "content-type" and h.raw_value.startswith(b"text/event-stream")
               for h in headers.headers.headers)


class Empty(pb_grpc.ExternalProcessorServicer):
    def __init__(self, per_response: bool = False) -> None:
        self.per_response = per_response

    async def Process(self, request_iterator, context):
        streamed = not self.per_response
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif kind == "response_headers":
                reply = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(remove_headers=["content-length"]))))
                if self.per_response and _is_sse(req.response_headers):
                    streamed = True
                    reply.mode_override.CopyFrom(STREAM_OVERRIDE)
                yield reply
            elif kind == "response_body":
                b = req.response_body
                if streamed:
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                            body=b.body, end_of_stream=b.end_of_stream)))))
                else:
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
            else:
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--listen", help="a gRPC address instead of --port, e.g. unix:/tmp/x.sock")
    p.add_argument("--response-body", choices=["duplex", "per-response"], default="duplex")
    p.add_argument("--grpc-option", action="append", default=[], metavar="NAME=INT",
                   help="an extra gRPC server option (A/B of server options)")
    a = p.parse_args()
    extra = [(k, int(v)) for k, _, v in (o.partition("=") for o in a.grpc_option)]
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000), *extra])
    pb_grpc.add_ExternalProcessorServicer_to_server(Empty(a.response_body == "per-response"), server)
    server.add_insecure_port(a.listen or f"127.0.0.1:{a.port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
