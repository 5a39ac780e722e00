"""Run the ext_proc gRPC server: listeners, health, metrics, policy reload and graceful drain."""

from __future__ import annotations

import asyncio
import signal

import grpc
import structlog
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ext_proc.server.config import Config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer

log = structlog.get_logger("ledgergate.server")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


def _grpc_address(listen: str) -> str:
    # "unix:/path" and "host:port" are both gRPC address forms already.
    return listen


async def serve(config: Config, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    rt = Runtime(config)
    await rt.start()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_body_bytes + (1 << 20)),
        ("grpc.max_send_message_length", config.max_body_bytes + (1 << 20)),
        ("grpc.max_concurrent_streams", 100000),
    ])
    pb_grpc.add_ExternalProcessorServicer_to_server(Servicer(rt), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for addr in config.listen:
        server.add_insecure_port(_grpc_address(addr))
    await server.start()
    status = health_pb2.HealthCheckResponse.SERVING if rt.ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for svc in ("", SERVICE_NAME):
        await health_servicer.set(svc, status)
    if config.metrics_listen:
        try:
            rt.metrics.serve(config.metrics_listen)
        except OSError as exc:
            log.warning("metrics_listener_failed", listen=config.metrics_listen, error=str(exc))
    log.info("ledgergate_serving", listen=config.listen, policy_version=rt.policies.current.version,
             writer_id=config.writer_id)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        loop.add_signal_handler(signal.SIGHUP, rt.policies.reload)
    except (NotImplementedError, RuntimeError):
        pass
    watcher = asyncio.create_task(rt.policies.watch(1.0))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("ledgergate_draining", grace_s=config.drain_grace_s)
        for svc in ("", SERVICE_NAME):
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        # In-flight streams finish (and commit their outcome records) within the grace period.
        await server.stop(config.drain_grace_s)
        watcher.cancel()
        await rt.close()
        log.info("ledgergate_stopped")
