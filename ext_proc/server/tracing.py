"""OpenTelemetry tracing of ext_proc exchanges: optional, off by default.

One span per ext_proc stream (one HTTP exchange), a child of the trace context Envoy passed: in the
gRPC metadata of the Process call when Envoy traces (its ext_proc client span, Envoy >= 1.31), else
in the HTTP request headers (the client's); W3C `traceparent`/`tracestate` first, then B3. A child
span per phase: identity, decide, ratelimit, audit_commit (decision and outcome) and response (the
inspection summary).

Attributes carry only bounded, non-content values taken from what the audit record already holds:
request id, surface, outcome, reason codes, policy version, model names, token counts. Never
prompt or response text, credentials or subjects.

Disabled, `open_tracing` returns `NO_TRACING`, whose exchanges are one shared object with empty
methods, and the OpenTelemetry packages are never imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.configerror import ConfigError
from ext_proc.providers import registry

EXPORTERS = ("otlp", "console")
# The model name comes from the client; it is an identifier, but bound it all the same.
_MAX_MODEL_CHARS = 128

# Surface api -> gen_ai.operation.name, where the conventions name the operation.
_GENAI_OPERATION = {"chat": "chat", "messages": "chat", "responses": "chat", "converse": "chat",
                    "completions": "text_completion", "embeddings": "embeddings",
                    "generate": "generate_content"}


@dataclass(frozen=True)
class TracingConfig:
    enabled: bool = False
    exporter: str = "otlp"
    endpoint: str | None = None
    service_name: str = "ledgergate"
    sample_ratio: float = 1.0
    insecure: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TracingConfig:
        d = dict(d or {})
        unknown = set(d) - {"enabled", "exporter", "endpoint", "service_name", "sample_ratio", "insecure"}
        if unknown:
            raise ConfigError(f"tracing: unknown key(s): {', '.join(sorted(unknown))}")
        enabled = d.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError("tracing.enabled: must be true or false")
        exporter = d.get("exporter", "otlp")
        if exporter not in EXPORTERS:
            raise ConfigError(f"tracing.exporter: {exporter!r} is not one of {', '.join(EXPORTERS)}")
        try:
            ratio = float(d.get("sample_ratio", 1.0))
        except (TypeError, ValueError):
            raise ConfigError("tracing.sample_ratio: must be a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError("tracing.sample_ratio: must be between 0 and 1")
        insecure = d.get("insecure", True)
        if not isinstance(insecure, bool):
            raise ConfigError("tracing.insecure: must be true or false")
        return cls(enabled=enabled, exporter=exporter, endpoint=d.get("endpoint") or None,
                   service_name=str(d.get("service_name") or "ledgergate"), sample_ratio=ratio,
                   insecure=insecure)


# --- disabled: no-op objects -------------------------------------------------------------------

_NULL_CONTEXT = contextlib.nullcontext()


class _NoopExchangeTrace:
    """What every exchange gets when tracing is off: one shared instance, nothing recorded, and
    the context managers are one shared nullcontext (no allocation per call)."""

    __slots__ = ()

    def start(self, head: Any) -> None:
        pass

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return _NULL_CONTEXT

    def audit_commit(self, record: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
        return _NULL_CONTEXT

    def begin(self, name: str) -> None:
        pass

    def end(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def finish(self, error: str | None) -> None:
        pass


NOOP_EXCHANGE = _NoopExchangeTrace()


class NoTracing:
    enabled = False

    def exchange(self, grpc_context: Any = None) -> _NoopExchangeTrace:
        return NOOP_EXCHANGE

    def shutdown(self) -> None:
        pass


NO_TRACING = NoTracing()


# --- trace context from the request headers ----------------------------------------------------

def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


def _hex_id(text: str | None, digits: tuple[int, ...]) -> int | None:
    if not text or len(text) not in digits:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value or None


def b3_parent(headers: Mapping[str, list[str]]) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) from B3 headers: single `b3` or multi `x-b3-*`; None when
    absent or malformed. A 64-bit trace id is widened to 128 bits with zeros, as B3 specifies."""
    single = _first(headers, "b3")
    trace_hex: str | None
    span_hex: str | None
    if single:
        parts = single.split("-")
        if len(parts) < 2:
            return None  # "0"/"1"/"d" alone: a sampling decision without a context
        trace_hex, span_hex = parts[0], parts[1]
        flag: str | None = parts[2] if len(parts) > 2 else None
    else:
        trace_hex, span_hex = _first(headers, "x-b3-traceid"), _first(headers, "x-b3-spanid")
        flag = _first(headers, "x-b3-sampled")
        if _first(headers, "x-b3-flags") == "1":
            flag = "d"
    trace_id, span_id = _hex_id(trace_hex, (16, 32)), _hex_id(span_hex, (16,))
    if trace_id is None or span_id is None:
        return None
    return trace_id, span_id, flag in ("1", "d", "true")


def _metadata_dict(metadata: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if isinstance(value, str):  # binary (-bin) metadata carries no trace context
            out.setdefault(key.lower(), []).append(value)
    return out


# --- enabled ------------------------------------------------------------------------------------

def _route_attributes(head: Any) -> dict[str, Any]:
    route = head.route_record()
    attrs: dict[str, Any] = {"ledgergate.request_id": head.request_id, "http.request.method": head.method,
                             "ledgergate.surface": route["surface"], "url.path": route["path"]}
    provider = route.get("provider")
    if provider:
        spec = registry.get(provider)     # its gen_ai.provider.name in the GenAI semantic conventions
        attrs["gen_ai.provider.name"] = attrs["gen_ai.system"] = spec.genai_name if spec else provider
    operation = _GENAI_OPERATION.get(route.get("api") or "")
    if operation:
        attrs["gen_ai.operation.name"] = operation
    return attrs


def _decision_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    decision = record.get("decision") or {}
    policy = record.get("policy") or {}
    attrs: dict[str, Any] = {"ledgergate.decision.outcome": str(decision.get("outcome") or "deny")}
    for key, attr in (("code", "ledgergate.decision.code"), ("status", "ledgergate.decision.status"),
                      ("throttled_by", "ledgergate.ratelimit.throttled_by")):
        if decision.get(key) is not None:
            attrs[attr] = decision[key]
    if record.get("identity_error"):
        attrs["ledgergate.identity.error"] = record["identity_error"]
    if policy.get("version"):
        attrs["ledgergate.policy.version"] = policy["version"]
    if policy.get("id"):
        attrs["ledgergate.policy.id"] = policy["id"]
    model = record.get("model_requested")
    if isinstance(model, str) and model:
        attrs["gen_ai.request.model"] = model[:_MAX_MODEL_CHARS]
    summary = (record.get("classification") or {}).get("summary") or {}
    if summary:
        # Label ids from the taxonomy (e.g. pii.email), never the matched values.
        attrs["ledgergate.classification.labels"] = sorted(str(k) for k in summary)
    redactions = decision.get("redactions") or []
    if redactions:
        attrs["ledgergate.redactions"] = len(redactions)
    return attrs


def _outcome_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"ledgergate.response.streamed": bool(record.get("streamed"))}
    if record.get("status") is not None:
        attrs["http.response.status_code"] = int(record["status"])
    usage = record.get("usage") or {}
    for key, attr in (("input_tokens", "gen_ai.usage.input_tokens"),
                      ("output_tokens", "gen_ai.usage.output_tokens")):
        if isinstance(usage.get(key), int):
            attrs[attr] = usage[key]
    blocked = record.get("blocked") or {}
    if blocked.get("label"):
        attrs["ledgergate.response.blocked_label"] = str(blocked["label"])
    if record.get("redactions"):
        attrs["ledgergate.response.redactions"] = len(record["redactions"])
    summary = (record.get("classification") or {}).get("summary") or {}
    if isinstance(summary, Mapping) and summary:
        attrs["ledgergate.response.classification.labels"] = sorted(str(k) for k in summary)
    if record.get("error"):
        attrs["ledgergate.response.error"] = str(record["error"])[:64]
    return attrs


class ExchangeTrace:
    """The spans of one ext_proc stream. Phase spans still open when the stream ends (an exception
    between `begin` and `end`) are ended by `finish`, marked as errors."""

    def __init__(self, tracing: Tracing, grpc_context: Any = None) -> None:
        self._tracing = tracing
        self._grpc_context = grpc_context
        self._root = None
        self._context = None
        self._open: dict[str, Any] = {}

    def start(self, head: Any) -> None:
        t = self._tracing
        parent = None
        if self._grpc_context is not None:
            parent = t.parent_context(_metadata_dict(self._grpc_context.invocation_metadata()))
        if parent is None:
            parent = t.parent_context(head.headers)
        self._root = t.tracer.start_span("ledgergate.exchange", context=parent, kind=t.SpanKind.SERVER,
                                         attributes=_route_attributes(head))
        self._context = t.trace.set_span_in_context(self._root)

    def _child(self, name: str, attributes: Mapping[str, Any] | None = None) -> Any:   # an OpenTelemetry span
        return self._tracing.tracer.start_span(f"ledgergate.{name}", context=self._context,
                                               attributes=attributes)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Any]:
        if self._root is None:
            yield None
            return
        span = self._child(name)
        try:
            yield span
        except BaseException as exc:
            # The type only: exception messages may quote the input.
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(self._tracing.Status(self._tracing.StatusCode.ERROR))
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def audit_commit(self, record: Mapping[str, Any]) -> Iterator[None]:
        kind = str(record.get("kind") or "record")
        if self._root is not None:
            if kind == "decision":
                self._root.set_attributes(_decision_attributes(record))
            elif kind == "outcome":
                outcome = _outcome_attributes(record)
                self._root.set_attributes({k: v for k, v in outcome.items() if k.startswith(("gen_ai.", "http."))})
                self.end("response", outcome)
        with self.phase("audit_commit") as span:
            if span is not None:
                span.set_attribute("ledgergate.audit.kind", kind)
            yield

    def begin(self, name: str) -> None:
        if self._root is not None and name not in self._open:
            self._open[name] = self._child(name)

    def end(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        span = self._open.pop(name, None)
        if span is None and self._root is not None and name == "response" and attributes:
            # An outcome without response headers (the stream ended first): still summarised.
            span = self._child(name)
        if span is not None:
            if attributes:
                span.set_attributes({k: v for k, v in attributes.items() if v is not None})
            span.end()

    def finish(self, error: str | None) -> None:
        if self._root is None:
            return
        StatusCode = self._tracing.StatusCode
        for span in self._open.values():
            span.set_status(self._tracing.Status(StatusCode.ERROR))
            span.end()
        self._open.clear()
        if error:
            self._root.set_attribute("error.type", error[:64])
            self._root.set_status(self._tracing.Status(StatusCode.ERROR))
        self._root.end()
        self._root = None


# What an exchange traces with: Tracing.exchange() or NoTracing.exchange().
AnyExchangeTrace = ExchangeTrace | _NoopExchangeTrace


class Tracing:
    """Tracing on: spans go to `provider` (an OpenTelemetry SDK TracerProvider)."""

    enabled = True

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("ledgergate")
        self.trace, self.SpanKind, self.Status, self.StatusCode = trace, SpanKind, Status, StatusCode
        self._w3c = TraceContextTextMapPropagator()

    def exchange(self, grpc_context: Any = None) -> ExchangeTrace:
        return ExchangeTrace(self, grpc_context)

    def parent_context(self, headers: Mapping[str, list[str]]) -> Any:   # an OpenTelemetry Context or None
        """The context Envoy (or the client) passed: W3C trace context first, then B3."""
        if "traceparent" in headers:
            ctx = self._w3c.extract(headers)
            if self.trace.get_current_span(ctx).get_span_context().is_valid:
                return ctx
        b3 = b3_parent(headers)
        if b3 is not None:
            trace_id, span_id, sampled = b3
            sc = self.trace.SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True,
                                        trace_flags=self.trace.TraceFlags(1 if sampled else 0))
            return self.trace.set_span_in_context(self.trace.NonRecordingSpan(sc))
        return None

    def shutdown(self) -> None:
        self.provider.shutdown()


def open_tracing(cfg: TracingConfig, *, instance_id: str = "") -> NoTracing | Tracing:
    """From the `tracing:` section: `NO_TRACING` when disabled (nothing imported), else a
    provider exporting in batches to the configured exporter."""
    if not cfg.enabled:
        return NO_TRACING
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError("tracing.enabled: the OpenTelemetry SDK is not installed "
                          "(pip install 'ledgergate[tracing]')") from None
    resource = Resource.create({"service.name": cfg.service_name, "service.instance.id": instance_id})
    # Parent-based: Envoy's sampling decision wins; the ratio applies to traces that start here.
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    exporter: Any
    if cfg.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("tracing.exporter otlp: the OTLP exporter is not installed "
                              "(pip install 'ledgergate[tracing]')") from None
        exporter = OTLPSpanExporter(endpoint=cfg.endpoint, insecure=cfg.insecure)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
