"""The data plane both doors call: validate -> choose a version -> batch -> dispatch -> response.

Protocol-neutral: it takes and returns `gateway.types` objects and never sees protobuf,
ASGI or Ray objects. The dispatcher is a seam (a Protocol), so tests can run it without Ray.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from opentelemetry.trace import Tracer

from contract.tensors import Arrays
from gateway import __version__
from gateway.errors import Code, GatewayError, Refusal, as_gateway_error, invalid, unavailable
from gateway.plane.batching import Batcher, BatchStats
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.plane.deadlines import DeadlineWheel
from gateway.plane.records import request_record
from gateway.plane.shm import SharedMemory
from gateway.plane.validation import check_declared_rows, validate_inputs, validate_outputs
from gateway.settings import ShadowSettings
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.stats import InferenceStats, VersionStats
from gateway.telemetry.tracing import RequestSpan, with_traceparent
from gateway.tenants.gate import Admitted, TenantGate, TenantRefusal
from gateway.tenants.settings import OverloadSettings
from gateway.traffic.routing import FAILURE_CODES, LiveCounts, Route, Router, RoutingTable, applicable
from gateway.traffic.shadow import ShadowRunner
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelConfig,
    ModelMetadata,
    RequestedOutput,
    RequestRecord,
    ShmRegion,
    Tensor,
    Timing,
    VersionStatus,
)

EXTENSIONS = (
    "model_repository",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "cuda_shared_memory",
)
# Refusals of the tenant gate and of priority parsing; the batcher counts its own (queue_full, shed, ...).
_GATE_REFUSALS = frozenset({Refusal.UNAUTHENTICATED, Refusal.RATE_LIMITED, Refusal.QUOTA})


class Dispatcher(Protocol):
    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays: ...


class RequestLog(Protocol):
    @property
    def healthy(self) -> bool:
        """False while records cannot be written (full or unwritable directory)."""

    async def append(self, record: RequestRecord, *, background: bool = False) -> None:
        """Returns once the record is as durable as the log's configured mode promises. A background
        record (a shadow copy's: no client waits on it) is written after the foreground ones it is queued with."""


class RepositoryControl(Protocol):
    """Deploys a model's versions from the repository, or drains and removes them (the composition root's)."""

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


class DataPlane:
    def __init__(
        self,
        catalog: Catalog,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
        name: str = "model-gateway",
        request_log: RequestLog | None = None,
        tracer: Tracer | None = None,
        shadow: ShadowSettings | None = None,
        tenants: TenantGate | None = None,
        overload: OverloadSettings | None = None,
        shared_memory: SharedMemory | None = None,
        repository: RepositoryControl | None = None,
    ) -> None:
        self.catalog = catalog
        self.tenants = tenants  # None: keys off, every request is the anonymous tenant ""
        self.overload = overload or OverloadSettings()
        self._levels = {name: i for i, name in enumerate(self.overload.classes)}
        self._fifo = self.overload.scheduling == "fifo"
        self.dispatcher = dispatcher
        self.request_log = request_log
        self.tracer = tracer  # None: tracing off, and the hot path does no tracing work at all
        self.router = Router(catalog)
        # Request ids for requests that bring none: unique per process, cheap to make.
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-"
        self._ids = itertools.count(1)
        self.metrics = metrics or Metrics(None)
        self.stats = InferenceStats(self.metrics)
        self.shm = shared_memory or SharedMemory()
        self.repository = repository  # None: load/unload off
        self.name = name
        self.live = True
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._inflight: dict[tuple[str, str], int] = {}  # per version, so an unload can wait for them
        for info in catalog.all():
            if info.batching.enabled:
                self._batchers[(info.model, info.version)] = self._make_batcher(info)
        self.deadlines = DeadlineWheel()  # one timer per 5 ms of deadlines, not one per request
        self.live_counts = LiveCounts()  # what ramped versions did, for the cluster's table to judge
        self.shadow = ShadowRunner(
            catalog,
            self._call_shadow,
            functools.partial(request_log.append, background=True) if request_log else None,
            self.metrics.registry,
            shadow,
        )

    def add_version(self, info: VersionInfo) -> None:
        """Serves a version that appeared in the repository while running (e.g. one a retraining job made)."""
        if info.batching.enabled:
            self._batchers[(info.model, info.version)] = self._make_batcher(info)
        self.catalog.add(info)

    def _make_batcher(self, info: VersionInfo) -> Batcher:
        b = info.batching
        model, version = info.model, info.version

        async def call(inputs: Arrays) -> Arrays:
            return await self.dispatcher.infer(model, version, inputs)

        def on_batch(stats: BatchStats) -> None:
            self.metrics.batch(model, version, stats.rows, stats.requests)

        classes = self.overload.classes

        def on_refusal(reason: Refusal, level: int, tenant: str) -> None:
            self.metrics.refusal(model, reason.value, classes[level] if not self._fifo else "", tenant)

        def on_executed(rows: int, seconds: float) -> None:
            self.stats.execution(model, version, rows, seconds)

        return Batcher(
            call,
            f"model '{model}' version '{version}'",
            max_batch_size=b.max_batch_size,
            max_wait_s=b.max_wait_ms / 1000.0,
            max_queue_rows=b.max_queue_rows,
            preferred_sizes=tuple(sorted(b.preferred_batch_sizes)),
            max_inflight=b.max_inflight_batches or 1,
            on_batch=on_batch,
            classes=classes if not self._fifo else ("fifo",),
            lower_share=self.overload.lower_share,
            fair=not self._fifo,
            admission=self.overload.admission,
            on_refusal=on_refusal,
            on_executed=on_executed,
        )

    # --- health and metadata -------------------------------------------------------------
    def server_live(self) -> bool:
        return self.live

    def server_ready(self) -> bool:
        # A log that cannot write makes the gateway refuse (or drop) records: say so to load balancers.
        log_ok = self.request_log is None or self.request_log.healthy
        return self.live and log_ok and self.catalog.serving_ready()

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return self.name, __version__, EXTENSIONS

    def model_ready(self, model: str, version: str | None) -> bool:
        return self.catalog.model_ready(model, version)

    def model_metadata(self, model: str, version: str | None) -> ModelMetadata:
        return self.catalog.metadata(model, version)

    def model_config(self, model: str, version: str | None) -> ModelConfig:
        return self.catalog.config(model, version)

    def model_statistics(self, model: str = "", version: str | None = None) -> list[VersionStats]:
        """Every version's statistics (model ""), a model's, or one version's; NOT_FOUND for unknown names."""
        if not model:
            keys = [(v.model, v.version) for v in self.catalog.all()]
        elif version:
            keys = [(model, self.catalog.get(model, version).version)]
        else:
            keys = [(model, v) for v in self.catalog.model_versions(model)]
        return self.stats.read(keys)

    # --- model repository control (off unless the composition root gives a controller) -------
    async def load_model(self, model: str) -> None:
        await self._repository_control().load(model)

    async def unload_model(self, model: str) -> None:
        await self._repository_control().unload(model)

    def _repository_control(self) -> RepositoryControl:
        if self.repository is None:
            raise GatewayError(
                Code.UNAVAILABLE,
                "model control is off on this gateway: set repository_control to true (and admin_token) to "
                "load and unload models",
            )
        return self.repository

    def inflight(self, model: str, version: str) -> int:
        """Requests of this version past the readiness check and not yet answered."""
        return self._inflight.get((model, version), 0)

    async def remove_version(self, model: str, version: str) -> None:
        """Takes an unloaded (drained) version out of the catalog and closes its batcher."""
        self.catalog.remove(model, version)
        self.metrics.set_ready(model, version, False)
        batcher = self._batchers.pop((model, version), None)
        if batcher is not None:
            await batcher.close()

    # --- shared memory ----------------------------------------------------------------------
    def shm_register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shm.register_system(name, key, offset, byte_size)

    def shm_register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self.shm.register_cuda(name, raw_handle, device_id, byte_size)

    def shm_unregister(self, kind: str, name: str = "") -> None:
        self.shm.unregister(kind, name)

    def shm_status(self, kind: str, name: str = "") -> list[ShmRegion]:
        return self.shm.status(kind, name)

    def shm_read(self, tensor: str, region: str, offset: int, size: int) -> bytes:
        return self.shm.read(tensor, region, offset, size)

    def shm_check_outputs(self, outputs: tuple[RequestedOutput, ...]) -> None:
        """Output regions are checked before the request runs; only a too small byte_size can fail after it."""
        for o in outputs:
            if o.shm is not None:
                self.shm.check(o.name, *o.shm)

    def shm_write(self, tensor: str, region: str, offset: int, size: int, data: bytes) -> None:
        self.shm.write(tensor, region, offset, size, data)

    def repository_index(self, ready_only: bool = False) -> list[VersionStatus]:
        return [s for s in self.catalog.index() if s.state == "READY" or not ready_only]

    def require_model(self, model: str) -> dict[str, VersionInfo]:
        """The model's versions; NOT_FOUND for a model this gateway does not serve."""
        return self.catalog.model_versions(model)

    def check_rows(
        self, model: str, version: str | None, shapes: Iterable[tuple[str, Sequence[int]]], max_rows: int
    ) -> None:
        """Refuses a request with too many rows from its declared shapes, before any tensor is decoded."""
        check_declared_rows(self.catalog, model, version, shapes, max_rows)

    # --- versions and readiness (the composition root and the traffic control loop) ----------
    def versions(self) -> list[VersionInfo]:
        return self.catalog.all()

    def version(self, model: str, version: str) -> VersionInfo:
        """NOT_FOUND for an unknown model or version."""
        return self.catalog.get(model, version)

    def default_version(self, model: str) -> VersionInfo:
        return self.catalog.default_version(model)

    def set_version_state(self, model: str, version: str, state: str, reason: str = "") -> None:
        self.catalog.set_state(model, version, state, reason)
        self.metrics.set_ready(model, version, state == "READY")

    def settled(self) -> bool:
        """No version is still loading."""
        return self.catalog.settled()

    # --- traffic: one entry point for every route and shadow change ---------------------------
    @property
    def routing_table(self) -> RoutingTable:
        return self.router.table

    def check_traffic(self, table: RoutingTable) -> None:
        """NOT_FOUND for a version this gateway does not know; INVALID_ARGUMENT for traffic to an unready one."""
        self.router.check(table)

    def apply_traffic(self, table: RoutingTable) -> list[str]:
        """Swaps in the part of the cluster's table this gateway can apply, at once for every request; returns
        what it could not apply (those models keep their current routes)."""
        table, problems = applicable(table, self.catalog, self.router.table)
        if self.router.apply(table):
            self.metrics.set_weights(self.router.table, self.catalog)
        return problems

    def take_live_counts(self) -> dict[str, dict[str, list[Any]]]:
        return self.live_counts.take()

    def merge_live_counts(self, counts: dict[str, dict[str, list[Any]]]) -> None:
        self.live_counts.merge(counts)

    # --- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Answers one request; it is in the request log (per the log's durability) before this returns or raises."""
        start = request.received_at or time.monotonic()
        request_id = request.id or f"{self._id_prefix}{next(self._ids):x}"
        timing = Timing()
        span = RequestSpan(self.tracer, request, request_id, start) if self.tracer is not None else None
        traceparent = span.traceparent if span is not None else ""
        # Metric labels only ever name models and versions from the catalog (bounded cardinality).
        model = version = ""
        response: InferResponse | None = None
        error: GatewayError | None = None
        route = Route("", "primary", "")
        admitted: Admitted | None = None
        priority = ""
        try:
            if self.tenants is not None:  # before routing: an unknown caller learns nothing of the models
                admitted = self.tenants.admit(request.api_key, request.model)
            priority = self._priority(request, admitted)
            route, info = self._route(request)
            model, version = info.model, info.version
            if request.deadline is None:
                response = await self._infer(info, request, request_id, timing, traceparent, admitted, priority)
            else:
                expiry = self.deadlines.arm(request.deadline)
                try:
                    response = await self._infer(info, request, request_id, timing, traceparent, admitted, priority)
                except asyncio.CancelledError:
                    if not expiry.expired():
                        raise
                    raise GatewayError(
                        Code.DEADLINE_EXCEEDED,
                        f"no answer from model '{model}' version '{version}' within the request's deadline",
                    ) from None
                finally:
                    expiry.disarm()
        except GatewayError as exc:
            error = exc
            if exc.refusal is not None and exc.refusal in _GATE_REFUSALS:
                whose = exc if isinstance(exc, TenantRefusal) else None
                if whose is not None:
                    priority = request.priority if request.priority in self._levels else whose.priority or ""
                self.metrics.refusal(
                    model or self._known(request.model),
                    exc.refusal.value,
                    priority,
                    whose.tenant if whose is not None else admitted.tenant if admitted is not None else "",
                )
        finally:
            if admitted is not None:
                self.tenants.release(admitted)  # type: ignore[union-attr]  # admitted implies a gate
        total = time.monotonic() - start
        code = error.code.name if error is not None else "OK"
        self.metrics.request(model, version, code, total, timing.queue_s, timing.model_s)
        if version:
            self.stats.request(model, version, error is None, total, timing.input_s)
        # Tracing off: the caller's trace id ("" when it sent no valid traceparent) still goes in the record.
        trace_id = span.finish(model, version, timing, error) if span is not None else request.traceparent[3:35]
        if model in self.router.ramped and self.router.ramped[model] == version:
            self.live_counts.add(model, version, code, total * 1000.0, route.role)
        if self.request_log is not None:
            await self.request_log.append(
                request_record(
                    request,
                    request_id,
                    model=model or request.model,
                    version=version,
                    role=route.role,
                    reason=route.reason,
                    outputs=response.outputs if response is not None else (),
                    error=error,
                    timing=timing,
                    total_s=total,
                    trace_id=trace_id,
                    tenant=admitted.tenant if admitted is not None else "",
                    priority=priority,
                )
            )
        shadows = self.router.shadows.get(model) if version else None
        if shadows and (error is None or code in FAILURE_CODES):
            # After the primary's answer is final (and logged): a shadow can never change or delay it.
            self.shadow.mirror(
                shadows,
                request,
                version,
                {t.name: t.data for t in response.outputs} if response is not None else None,
                request_id,
                trace_id,
            )
        if error is not None:
            raise with_traceparent(error, traceparent) if traceparent else error
        assert response is not None
        return response

    def _priority(self, request: InferRequest, admitted: Admitted | None) -> str:
        """The request's class: its priority header, else its tenant's default, else the default class."""
        own = admitted.priority if admitted is not None else None
        name = request.priority or own or self.overload.default_priority
        if name not in self._levels:
            raise invalid(f"unknown priority class '{name[:64]}'; use one of {', '.join(self.overload.classes)}")
        return name

    def _known(self, model: str) -> str:
        """The model's name when this gateway serves it, else "" (metric labels stay bounded)."""
        try:
            self.catalog.model_versions(model)
        except GatewayError:
            return ""
        return model

    def _route(self, request: InferRequest) -> tuple[Route, VersionInfo]:
        route = self.router.choose(request.model, request.version, request.routing_key)
        info = self.catalog.get(request.model, route.version)
        if route.role != "pinned" and not info.ready:
            # A split's version went unready after the split was set: serve from a ready one instead.
            fallback = self.catalog.default_version(request.model)
            return Route(
                fallback.version, "primary", f"version {route.version} is not ready; newest ready version"
            ), fallback
        return route, info

    async def _infer(
        self,
        info: VersionInfo,
        request: InferRequest,
        request_id: str,
        timing: Timing,
        traceparent: str = "",
        admitted: Admitted | None = None,
        priority: str = "",
    ) -> InferResponse:
        arrays, rows = validate_inputs(info, request.inputs)
        validate_outputs(info, request.outputs)
        if admitted is not None:
            self.tenants.take_rows(admitted, rows)  # type: ignore[union-attr]  # admitted implies a gate
        if not info.ready:
            raise unavailable(f"model '{info.model}' version '{info.version}' is not ready: {info.reason}")
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise GatewayError(Code.DEADLINE_EXCEEDED, "the request's deadline passed before it was dispatched")
        level = 0 if self._fifo else self._levels.get(priority, 0)
        tenant = admitted.tenant if admitted is not None else ""
        timing.input_s = time.monotonic() - (request.received_at or time.monotonic())
        key = (info.model, info.version)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            batcher = self._batchers.get(key)
            if batcher is not None:  # the usual path, awaited here: one coroutine frame fewer per request
                out = await batcher.submit(arrays, rows, request.deadline, timing, level, tenant)
            else:
                out = await self._run_unbatched(info, arrays, rows, timing)
        finally:
            self._inflight[key] -= 1
        wanted = [o.name for o in request.outputs] or list(info.output_index)
        tensors = []
        for name in wanted:
            if name not in out:
                raise GatewayError(
                    Code.INTERNAL, f"model '{info.model}' version '{info.version}' did not produce output '{name}'"
                )
            tensors.append(Tensor(name, info.output_index[name].datatype, out[name]))
        return InferResponse(info.model, info.version, tuple(tensors), request_id, traceparent=traceparent)

    async def _run_unbatched(self, info: VersionInfo, arrays: Arrays, rows: int, timing: Timing) -> Arrays:
        started = time.monotonic()
        try:
            out = await self.dispatcher.infer(info.model, info.version, arrays)
        except Exception as exc:  # noqa: BLE001 - the same answer as the batched path
            raise as_gateway_error(exc, f"model '{info.model}' version '{info.version}'") from None
        timing.model_s = time.monotonic() - started
        self.stats.execution(info.model, info.version, rows, timing.model_s)
        return out

    async def _call_shadow(self, info: VersionInfo, inputs: Arrays) -> Arrays:
        return await self.dispatcher.infer(info.model, info.version, inputs)

    async def close(self, drain_s: float = 5.0) -> None:
        self.live = False
        await self.shadow.close(drain_s)
        for b in self._batchers.values():
            await b.close()
        self.shm.close()
