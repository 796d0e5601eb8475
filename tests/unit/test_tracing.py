"""gateway.telemetry.tracing: server spans of inference requests, W3C trace context in and out, the log's trace id."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from gateway.core import DataPlane
from gateway.doors.grpc import InferenceServicer
from gateway.doors.http import HttpDoor
from gateway.errors import GatewayError
from gateway.settings import load_settings
from gateway.telemetry.tracing import TracingError, TracingSettings, build_tracing, parse_traceparent
from gateway.types import RequestRecord
from tests.unit.test_core import catalog
from tests.unit.test_core import request as make_request

Arrays = dict[str, np.ndarray]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Dispatcher:
    """y = 2x, v = 1 on every row; takes a little while, or raises."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        await asyncio.sleep(0.002)
        if self.raises is not None:
            raise self.raises
        x = inputs["x"]
        return {"y": x * 2, "v": np.ones(len(x), dtype=np.float32)}


class Log:
    """A RequestLog that keeps the records."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.healthy = True

    async def append(self, record: RequestRecord) -> None:
        self.records.append(record)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    yield exp
    exp.shutdown()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()  # default sampler: ParentBased(ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test")
    provider.shutdown()


def plane(tracer: Tracer | None, log: Log, *, batching: bool = True, dispatcher: Dispatcher | None = None) -> DataPlane:
    return DataPlane(
        catalog(("m", "1", "READY"), batching=batching), dispatcher or Dispatcher(), request_log=log, tracer=tracer
    )


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    out = {s.name: s for s in spans}
    assert len(out) == len(spans)
    return out


def duration_s(span: ReadableSpan) -> float:
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


# --- the data plane -------------------------------------------------------------------------


async def test_a_traced_request_has_a_server_span_in_its_callers_trace(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    log = Log()
    dp = plane(tracer, log)
    resp = await dp.infer(make_request(rows=3, id="req-1", protocol="grpc", traceparent=TRACEPARENT))
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"ModelInfer m", "batch wait", "model call"}
    server = spans["ModelInfer m"]
    ctx = server.get_span_context()
    assert ctx is not None and f"{ctx.trace_id:032x}" == TRACE_ID
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.is_remote and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.status.status_code is StatusCode.UNSET
    assert dict(server.attributes or {}) == {
        "inference.protocol": "grpc",
        "inference.request_id": "req-1",
        "inference.model": "m",
        "inference.model_version": "1",
        "inference.code": "OK",
        "rpc.grpc.status_code": 0,
        "inference.batch_rows": 3,
        "inference.batch_requests": 1,
    }
    # Children of the server span, made from the batcher's Timing (the request log holds the same numbers).
    (record,) = log.records
    wait, call = spans["batch wait"], spans["model call"]
    for child in (wait, call):
        assert child.parent is not None and child.parent.span_id == ctx.span_id
        assert child.context is not None and child.context.trace_id == ctx.trace_id
    assert duration_s(wait) == pytest.approx(record.queue_ms / 1000.0, abs=1e-6)
    assert duration_s(call) == pytest.approx(record.model_ms / 1000.0, abs=1e-6)
    assert record.model_ms > 0
    assert call.start_time == wait.end_time
    assert server.start_time is not None and server.end_time is not None and call.end_time is not None
    assert wait.start_time is not None and server.start_time <= wait.start_time
    assert call.end_time <= server.end_time
    assert dict(call.attributes or {}) == {"inference.batch_rows": 3, "inference.batch_requests": 1}
    # Trace context out, and the trace id in the request log.
    assert resp.traceparent == f"00-{TRACE_ID}-{ctx.span_id:016x}-01"
    assert record.trace_id == TRACE_ID
    await dp.close()


async def test_a_request_without_traceparent_starts_a_trace(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    log = Log()
    dp = plane(tracer, log, batching=False)
    resp = await dp.infer(make_request(protocol="http"))
    (server,) = exporter.get_finished_spans()  # unbatched: no Timing, so no child spans
    ctx = server.get_span_context()
    assert ctx is not None and server.parent is None and server.name == "ModelInfer m"
    assert (server.attributes or {})["http.response.status_code"] == 200
    assert resp.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert log.records[0].trace_id == f"{ctx.trace_id:032x}"
    await dp.close()


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        TRACEPARENT.upper(),
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        TRACEPARENT[:-1],
    ],
)
async def test_a_malformed_traceparent_is_ignored(tracer: Tracer, exporter: InMemorySpanExporter, bad: str) -> None:
    assert parse_traceparent(bad) == ""
    log = Log()
    dp = plane(tracer, log)
    await dp.infer(make_request(traceparent=parse_traceparent(bad)))
    server = by_name(exporter.get_finished_spans())["ModelInfer m"]
    ctx = server.get_span_context()
    assert ctx is not None and server.parent is None and f"{ctx.trace_id:032x}" != TRACE_ID  # a new trace
    assert log.records[0].trace_id == f"{ctx.trace_id:032x}"
    await dp.close()


def test_parse_traceparent_accepts_valid_headers() -> None:
    assert parse_traceparent(TRACEPARENT) == TRACEPARENT
    assert parse_traceparent(f" {TRACEPARENT} ") == TRACEPARENT
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-00-future") == f"01-{TRACE_ID}-{PARENT_ID}-00"


async def test_failures_set_error_status_and_carry_their_own_traceparent(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    log = Log()
    dp = plane(tracer, log)
    with pytest.raises(GatewayError) as e:
        await dp.infer(make_request(model="nope", traceparent=TRACEPARENT, protocol="http"))
    (server,) = exporter.get_finished_spans()
    assert server.name == "ModelInfer"  # an unknown model does not name spans
    assert server.status.status_code is StatusCode.ERROR and server.status.description is not None
    assert server.status.description.startswith("NOT_FOUND: ")
    attributes = server.attributes or {}
    assert attributes["inference.code"] == "NOT_FOUND" and attributes["error.type"] == "NOT_FOUND"
    assert attributes["http.response.status_code"] == 404
    ctx = server.get_span_context()
    assert ctx is not None and e.value.traceparent == f"00-{TRACE_ID}-{ctx.span_id:016x}-01"
    assert (log.records[0].code, log.records[0].trace_id) == ("NOT_FOUND", TRACE_ID)
    await dp.close()


async def test_a_failed_batch_gives_each_caller_its_own_traceparent(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    log = Log()
    dp = plane(tracer, log, dispatcher=Dispatcher(raises=RuntimeError("boom")))
    results = await asyncio.gather(*(dp.infer(make_request(start=i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, GatewayError) and r.code.name == "INTERNAL" for r in results)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3 and all(s.status.status_code is StatusCode.ERROR for s in spans)
    ids = {f"{s.context.span_id:016x}" for s in spans if s.context is not None}
    assert {r.traceparent[36:52] for r in results if isinstance(r, GatewayError)} == ids
    await dp.close()


async def test_an_unsampled_caller_is_followed_and_its_trace_id_still_logged(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    log = Log()
    dp = plane(tracer, log)
    resp = await dp.infer(make_request(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00"))
    assert exporter.get_finished_spans() == ()
    assert resp.traceparent.startswith(f"00-{TRACE_ID}-") and resp.traceparent.endswith("-00")
    assert log.records[0].trace_id == TRACE_ID
    await dp.close()


async def test_tracing_off_logs_the_callers_trace_id_and_sends_nothing_back() -> None:
    log = Log()
    dp = plane(None, log)
    resp = await dp.infer(make_request(traceparent=TRACEPARENT))
    assert resp.traceparent == "" and log.records[0].trace_id == TRACE_ID
    await dp.infer(make_request())
    with pytest.raises(GatewayError) as e:
        await dp.infer(make_request(model="nope", traceparent=TRACEPARENT))
    assert e.value.traceparent == ""
    assert [r.trace_id for r in log.records] == [TRACE_ID, "", TRACE_ID]
    await dp.close()


# --- the doors ------------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["on", "off"])
async def http(request: pytest.FixtureRequest, tracer: Tracer) -> AsyncIterator[tuple[httpx.AsyncClient, Log, bool]]:
    on: bool = request.param
    log = Log()
    dp = plane(tracer if on else None, log)
    door = HttpDoor(dp, max_body_bytes=1 << 16, max_elements=1 << 16, default_timeout_s=30.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        yield c, log, on
    await dp.close()


BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


async def test_http_door_takes_and_returns_trace_context(
    http: tuple[httpx.AsyncClient, Log, bool], exporter: InMemorySpanExporter
) -> None:
    client, log, on = http
    r = await client.post(
        "/v2/models/m/infer", json=BODY, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    )
    assert r.status_code == 200, r.text
    assert log.records[0].trace_id == TRACE_ID and log.records[0].protocol == "http"
    if not on:
        assert "traceparent" not in r.headers and exporter.get_finished_spans() == ()
        return
    server = by_name(exporter.get_finished_spans())["ModelInfer m"]
    ctx = server.get_span_context()
    assert ctx is not None and r.headers["traceparent"] == f"00-{TRACE_ID}-{ctx.span_id:016x}-01"
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.parent.trace_state.get("vendor") == "abc"
    assert (server.attributes or {})["inference.protocol"] == "http"


async def test_http_door_errors_carry_traceparent(http: tuple[httpx.AsyncClient, Log, bool]) -> None:
    client, log, on = http
    r = await client.post("/v2/models/nope/infer", json=BODY, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 404
    assert r.headers["traceparent"].startswith(f"00-{TRACE_ID}-") if on else "traceparent" not in r.headers
    assert log.records[0].trace_id == TRACE_ID


async def test_http_door_ignores_a_malformed_traceparent(http: tuple[httpx.AsyncClient, Log, bool]) -> None:
    client, log, on = http
    r = await client.post("/v2/models/m/infer", json=BODY, headers={"traceparent": "00-nope"})
    assert r.status_code == 200, r.text
    if on:
        assert not r.headers["traceparent"].startswith(f"00-{TRACE_ID}")
        assert log.records[0].trace_id == r.headers["traceparent"][3:35]
    else:
        assert "traceparent" not in r.headers and log.records[0].trace_id == ""


class GrpcContext:
    """The parts of grpc.aio.ServicerContext that ModelInfer uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"aborted {code}")


async def test_grpc_door_takes_and_returns_trace_context(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    from gateway._proto import inference_pb2 as pb

    log = Log()
    dp = plane(tracer, log)
    servicer = InferenceServicer(dp, 1 << 16, 30.0)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    ctx = GrpcContext((("traceparent", TRACEPARENT),))
    await servicer.ModelInfer(req, ctx)
    server = by_name(exporter.get_finished_spans())["ModelInfer m"]
    span_ctx = server.get_span_context()
    assert span_ctx is not None and ctx.trailing == (("traceparent", f"00-{TRACE_ID}-{span_ctx.span_id:016x}-01"),)
    assert log.records[0].trace_id == TRACE_ID
    failing = GrpcContext((("traceparent", TRACEPARENT),))
    with pytest.raises(RuntimeError, match="NOT_FOUND"):
        await servicer.ModelInfer(pb.ModelInferRequest(model_name="nope"), failing)
    assert dict(failing.trailing)["traceparent"].startswith(f"00-{TRACE_ID}-")
    await dp.close()


# --- settings -------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_builds_no_provider() -> None:
    tracing = build_tracing(load_settings().tracing)
    assert tracing.tracer is None and tracing.provider is None
    tracing.shutdown()


def test_console_exporter_builds_a_sampled_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TRACING__EXPORTER", "console")
    monkeypatch.setenv("GATEWAY_TRACING__SAMPLE_RATIO", "0.25")
    s = load_settings().tracing
    assert (s.exporter, s.sample_ratio, s.service_name) == ("console", 0.25, "model-gateway")
    tracing = build_tracing(s)
    assert tracing.tracer is not None and tracing.provider is not None
    assert "TraceIdRatioBased{0.25}" in tracing.provider.sampler.get_description()
    tracing.shutdown()
    assert tracing.tracer is None


def _otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ImportError:
        return False


@pytest.mark.skipif(_otlp_installed(), reason="the OTLP exporter is installed")
def test_otlp_without_its_package_says_what_to_install() -> None:
    with pytest.raises(TracingError, match="pip install opentelemetry-exporter-otlp-proto-http"):
        build_tracing(TracingSettings(exporter="otlp"))
