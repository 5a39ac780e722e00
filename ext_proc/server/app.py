"""Run the ext_proc gRPC server: listeners, health (re-evaluated every server.health_interval_s),
metrics and /ready, policy reload and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from typing import Any

import grpc
import structlog
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ext_proc.server.config import Config
from ext_proc.server.health import ReadinessMonitor
from ext_proc.server.local_reply import DrainGate, EnvoyReplyLog
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer

log = structlog.get_logger("ledgergate.server")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class ListenError(OSError):
    """A listen address is taken or unusable: the process refuses to start."""


def _grpc_address(listen: str) -> str:
    # "unix:/path" and "host:port" are both gRPC address forms already.
    return listen


async def serve(config: Config, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    rt = Runtime(config)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_body_bytes + (1 << 20)),
        ("grpc.max_send_message_length", config.max_body_bytes + (1 << 20)),
        ("grpc.max_concurrent_streams", 100000),
        # gRPC sets SO_REUSEPORT by default: a second server on a taken port would then share
        # its streams (and split the audit trail) instead of failing to start.
        ("grpc.so_reuseport", 0),
    ])
    gate = DrainGate(Servicer(rt), rt)
    pb_grpc.add_ExternalProcessorServicer_to_server(gate, server)
    # Envoy's access log of its own replies ledgergate never saw (server/local_reply.py).
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(EnvoyReplyLog(rt), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for addr in config.listen:
        try:
            bound = server.add_insecure_port(_grpc_address(addr))
        except RuntimeError as exc:  # grpc.aio raises where grpc returns 0
            raise ListenError(f"cannot listen on {addr}: {exc} (is another ledgergate already there?)") from None
        if not bound and not addr.startswith("unix:"):
            raise ListenError(f"cannot listen on {addr} (is another ledgergate already there?)")
    # The ports are ours before anything is started (an audit segment is opened only then).
    await rt.start()
    await server.start()

    async def publish(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for svc in ("", SERVICE_NAME):
            await health_servicer.set(svc, status)

    monitor = ReadinessMonitor(rt, publish, interval_s=config.health_interval_s)
    await monitor.check()
    metrics_http = None
    if config.metrics_listen:
        try:
            metrics_http = rt.metrics.serve(config.metrics_listen, ready=monitor.http_answer)
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
    reloads: set[asyncio.Task[Any]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(rt.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (NotImplementedError, RuntimeError):
        pass
    watcher = asyncio.create_task(rt.watch_policy(1.0))
    health_task = asyncio.create_task(monitor.run(), name="readiness")
    # Everything built at start (policy, classifier, gRPC, protobuf descriptors) lives as long as
    # the process: out of the collector's way, so that a full collection under load walks only
    # what requests left behind (measured here: 12-14 ms pauses, every few seconds at 230 req/s).
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("ledgergate_draining", grace_s=config.drain_grace_s)
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_task
        await monitor.drain()
        # In-flight streams finish (and commit their outcome records) within the grace period;
        # requests arriving meanwhile get a recorded 503 + retry-after (an empty 500 before).
        await gate.drain(config.drain_grace_s)
        # Then the refusals under way (milliseconds), Envoy's access-log stream (never ends by
        # itself) and whatever outlived the grace: cancelled.
        await server.stop(0.5)
        watcher.cancel()
        if metrics_http is not None:
            await asyncio.to_thread(metrics_http.shutdown)
            metrics_http.server_close()
        await rt.close()
        log.info("ledgergate_stopped")
