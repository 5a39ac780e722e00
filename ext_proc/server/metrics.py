"""Prometheus metrics. Labels carry only bounded, non-content values: outcomes, label ids from the
taxonomy, surface names, reason codes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Spend labels come from verified identities (tenant) and from request bodies (model): at most this
# many distinct values per label are exported, later ones are counted under "other", so a client
# inventing model names cannot grow the registry without bound.
SPEND_LABEL_VALUES = 200
_LABEL_MAX_CHARS = 64


class BoundedLabel:
    """The first `limit` distinct values of one label as themselves, every later one as "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        value = "".join(c if c.isprintable() else "?" for c in str(value)[:_LABEL_MAX_CHARS])
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return "other"


_PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("ledgergate_decisions_total", "Request decisions by outcome and surface",
                                 ["outcome", "surface"], registry=r)
        self.identity_failures = Counter("ledgergate_identity_failures_total",
                                         "Requests whose credential could not be verified, by reason",
                                         ["reason"], registry=r)
        self.phase_seconds = Histogram("ledgergate_phase_seconds", "Time spent per pipeline phase",
                                       ["phase"], buckets=_PHASE_BUCKETS, registry=r)
        self.streams = Gauge("ledgergate_streams_in_flight", "ext_proc streams currently open", registry=r)
        self.streams_total = Counter("ledgergate_streams_total", "ext_proc streams opened", registry=r)
        self.errors = Counter("ledgergate_errors_total", "Fail-closed errors by kind", ["kind"], registry=r)
        self.ratelimit_rejections = Counter("ledgergate_ratelimit_rejections_total",
                                            "Requests throttled, by limit id", ["limit"], registry=r)
        self.policy_reload_failures = Counter("ledgergate_policy_reload_failures_total",
                                              "Policy reloads rejected (the old version kept running)",
                                              registry=r)
        self.tokens = Counter("ledgergate_tokens_total",
                              "Tokens used as the provider reported them (outcome records' usage), by direction "
                              "(input/output), tenant, model and provider: spend to graph and alert on",
                              ["direction", "tenant", "model", "provider"], registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._tenant_label = BoundedLabel(SPEND_LABEL_VALUES)
        self._model_label = BoundedLabel(SPEND_LABEL_VALUES)
        self.reloads = Counter("ledgergate_config_reloads_total",
                               "Reloads of the policy or the identity configuration, by result (ok: now in "
                               "force; rejected: the previous one kept running)", ["what", "result"], registry=r)

    def spend(self, usage: Mapping[str, Any] | None, *, tenant: str | None, model: str | None, provider: str | None) -> None:
        """Count one answer's token usage; nothing when the provider reported none."""
        if not usage:
            return
        labels = (self._tenant_label(tenant), self._model_label(model), provider or "unknown")
        for direction in ("input", "output"):
            n = usage.get(f"{direction}_tokens")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                self.tokens.labels(direction, *labels).inc(n)

    def decision(self, outcome: str, surface: str) -> None:
        self._child(self.decisions, outcome, surface).inc()

    def identity_failure(self, reason: str) -> None:
        self.identity_failures.labels(reason).inc()

    def phase(self, name: str, seconds: float) -> None:
        self._child(self.phase_seconds, name).observe(seconds)

    def _child(self, metric: Any, *values: str) -> Any:
        """A labelled series, looked up in prometheus_client once (its `labels()` takes a lock and
        re-validates the values on every call; these run several times per request). The memo
        holds no more series than the registry itself does."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def stream_started(self) -> None:
        self.streams.inc()
        self.streams_total.inc()

    def stream_ended(self) -> None:
        self.streams.dec()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def serve(self, listen: str, *, ready: Callable[[], tuple[int, bytes]] | None = None) -> ThreadingWSGIServer:
        """Serve Prometheus text on `listen` (host:port) from a daemon thread: `/ready` answers
        `ready()` (status, body), every other path the metrics. Returns the server (shutdown())."""
        host, _, port = listen.rpartition(":")
        host = (host or "127.0.0.1").strip("[]")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/ready" and ready is not None:
                status, body = ready()
                start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                               [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
                return [body]
            metrics: Iterable[bytes] = metrics_app(environ, start_response)
            return metrics

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        httpd = make_server(host, int(port), app, Server, handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
        return httpd


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds; no access log
        pass
