"""The plumbing floor for `make bench`: an ext_proc processor with ledgergate's gRPC setup and
processing modes that inspects nothing. Request body BUFFERED -> continue; response body
FULL_DUPLEX_STREAMED -> every chunk echoed back as it came."""

from __future__ import annotations

import argparse
import asyncio

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc


class Empty(pb_grpc.ExternalProcessorServicer):
    async def Process(self, request_iterator, context):
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(remove_headers=["content-length"]))))
            elif kind == "response_body":
                b = req.response_body
                yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                    body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                        body=b.body, end_of_stream=b.end_of_stream)))))
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
            else:
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000)])
    pb_grpc.add_ExternalProcessorServicer_to_server(Empty(), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
