"""OpenTelemetry tracing of inference requests: one server span per request, W3C trace context in and out.

Off by default (exporter 'none'): no SDK is loaded and the data plane checks one attribute per request.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.errors import HTTP_STATUS, Code, GatewayError
from gateway.types import InferRequest, Timing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

Exporter = Literal["none", "console", "otlp"]
OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"


class TracingSettings(BaseModel):
    """Tracing of inference requests (OpenTelemetry); nested in `GatewaySettings.tracing`."""

    model_config = ConfigDict(extra="forbid")

    exporter: Exporter = "none"
    """Where spans go: 'none' (tracing off; only an incoming traceparent's trace id is logged), 'console', 'otlp'."""
    otlp_endpoint: str = "http://localhost:4318/v1/traces"
    """OTLP over HTTP/protobuf: the collector's full traces URL (exporter 'otlp' only)."""
    service_name: str = Field("model-gateway", min_length=1)
    """The `service.name` resource attribute of every span."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of new traces recorded; a request that brings a traceparent follows its caller's sampled flag."""


class TracingError(Exception):
    """Tracing cannot start as configured (for example, the OTLP exporter package is missing)."""


class Tracing:
    """The tracer the data plane uses (None when off) and the SDK provider behind it, owned by the gateway."""

    def __init__(self, tracer: trace.Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider

    def shutdown(self) -> None:
        """Exports what is buffered and stops the exporter (blocks up to the exporter's timeout)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
            self.tracer = None


def build_tracing(settings: TracingSettings) -> Tracing:
    """Builds the tracer from settings; with exporter 'none' no SDK is imported and `tracer` is None."""
    if settings.exporter == "none":
        return Tracing()
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter: SpanExporter
    if settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise TracingError(
                f"tracing.exporter 'otlp' needs the OTLP exporter: pip install {OTLP_PACKAGE} "
                "(into the gateway's environment), or set tracing.exporter to 'console' or 'none'"
            ) from None
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    else:
        exporter = ConsoleSpanExporter(service_name=settings.service_name)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: __version__}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer("gateway", __version__), provider)


# --- W3C trace context (https://www.w3.org/TR/trace-context/) ------------------------------------
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(value: str) -> str:
    """The traceparent header as 55 canonical characters, or "" when it is malformed (then it is ignored)."""
    value = value.strip()
    m = _TRACEPARENT.fullmatch(value)
    if (
        m is None
        or m[1] == "ff"
        or (m[1] == "00" and m[5] is not None)
        or m[2] == "00000000000000000000000000000000"
        or m[3] == "0000000000000000"
    ):
        return ""
    return value[:55]  # a later version's extra fields are dropped


def trace_id_of(traceparent: str) -> str:
    """The 32 hex characters of a traceparent from `parse_traceparent` ("" for "")."""
    return traceparent[3:35]


def _parent(request: InferRequest) -> Context | None:
    if not request.traceparent:
        return None
    tp = request.traceparent
    state = TraceState.from_header([request.tracestate]) if request.tracestate else None
    parent = SpanContext(
        int(tp[3:35], 16),
        int(tp[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(tp[53:55], 16)),
        trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


class RequestSpan:
    """The server span of one inference request, started when the data plane takes the request."""

    __slots__ = ("_ns_offset", "_protocol", "_t0", "_tracer", "span", "trace_id", "traceparent")

    def __init__(self, tracer: trace.Tracer, request: InferRequest, request_id: str, received_at: float) -> None:
        self._tracer = tracer
        self._protocol = request.protocol
        self._t0 = time.monotonic()
        self._ns_offset = time.time_ns() - int(self._t0 * 1e9)  # monotonic seconds -> unix ns
        # Named after the model once the catalog knows it (span names stay low-cardinality).
        self.span = tracer.start_span(
            "ModelInfer",
            context=_parent(request),
            kind=SpanKind.SERVER,
            start_time=self._ns(received_at),
            attributes={"inference.protocol": request.protocol, "inference.request_id": request_id},
        )
        ctx = self.span.get_span_context()
        self.trace_id = f"{ctx.trace_id:032x}"
        self.traceparent = f"00-{self.trace_id}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._ns_offset

    def finish(self, model: str, version: str, timing: Timing, error: GatewayError | None) -> str:
        """Ends the span (and its children) with the request's outcome; returns the trace id."""
        span = self.span
        if not span.is_recording():  # not sampled: nothing to fill in
            span.end()
            return self.trace_id
        end = self._ns(time.monotonic())
        if model:
            span.update_name(f"ModelInfer {model}")
            span.set_attributes({"inference.model": model, "inference.model_version": version})
        code = error.code if error is not None else Code.OK
        span.set_attribute("inference.code", code.name)  # the error table's code, the same for both doors
        if self._protocol == "http":
            span.set_attribute("http.response.status_code", HTTP_STATUS[code])
        elif self._protocol == "grpc":
            span.set_attribute("rpc.grpc.status_code", int(code))
        if error is not None:
            span.set_attribute("error.type", code.name)
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {error.message}"))
        if timing.batch_rows:
            batch = {"inference.batch_rows": timing.batch_rows, "inference.batch_requests": timing.batch_requests}
            span.set_attributes(batch)
            # Child spans rather than span events: the queue wait and the Ray call have durations, and
            # spans show them as bars in a trace view. The batch is shared by several requests, so they
            # are made after the fact from Timing; they start where the data plane took the request
            # (routing and validation before the enqueue take microseconds).
            context = trace.set_span_in_context(span)
            queued = self._ns(self._t0)
            dispatched = queued + int(timing.queue_s * 1e9)
            returned = dispatched + int(timing.model_s * 1e9)
            self._tracer.start_span("batch wait", context, start_time=queued).end(end_time=dispatched)
            self._tracer.start_span("model call", context, start_time=dispatched, attributes=batch).end(
                end_time=returned
            )
        span.end(end_time=end)
        return self.trace_id


def with_traceparent(error: GatewayError, traceparent: str) -> GatewayError:
    """A copy of a (possibly shared, e.g. by a whole batch) error that names this request's server span."""
    copy = GatewayError(error.code, error.message, retry_after_s=error.retry_after_s)
    copy.traceparent = traceparent
    return copy
