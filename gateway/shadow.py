"""Shadow traffic: a copy of a request goes to each shadow version after the primary has answered.

A shadow's answer is never returned. Its outcome, latency and output are logged under the primary's
request id (role `shadow`) and compared with the primary's output (agreement and mean absolute
difference, as metrics). Shadow work can never delay, fail or overload the primary:
- it starts after the primary's answer is final and runs as its own task;
- at most `max_inflight` shadow calls run per gateway process; beyond that a copy is dropped;
- each shadow call has its own deadline and the shadow version's own bounded batch queue;
- every copy that is not sent or not answered is counted (`gateway_shadow_dropped`), never skipped
  silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from gateway.catalog import Catalog, VersionInfo
from gateway.errors import Code, GatewayError, as_gateway_error
from gateway.settings import ShadowSettings
from gateway.types import InferRequest, RequestRecord, Tensor, Timing
from gateway.validation import validate_inputs

Arrays = dict[str, np.ndarray]
# Runs one call on a version the way the data plane does (its batcher, or a direct dispatch).
RunVersion = Callable[[VersionInfo, Arrays, int, float, Timing], Awaitable[Arrays]]
AppendRecord = Callable[[RequestRecord], Awaitable[None]]

log = logging.getLogger(__name__)

_DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class ShadowMetrics:
    def __init__(self, registry: Any) -> None:
        self.calls = Counter("gateway_shadow_requests", "Shadow calls by outcome", ["model", "version", "code"],
                             registry=registry)
        self.dropped = Counter("gateway_shadow_dropped", "Shadow copies not sent or not answered, by reason",
                               ["model", "version", "reason"], registry=registry)
        self.compared = Counter("gateway_shadow_comparisons",
                                "Shadow answers compared with the primary's, by result (agree | disagree)",
                                ["model", "version", "result"], registry=registry)
        self.abs_diff = Histogram("gateway_shadow_mean_abs_diff",
                                  "Mean absolute difference between shadow and primary outputs, per request",
                                  ["model", "version"], buckets=_DIFF_BUCKETS, registry=registry)
        self.latency = Histogram("gateway_shadow_duration_seconds", "Latency of answered shadow calls",
                                 ["model", "version"], buckets=_LATENCY_BUCKETS, registry=registry)


def compare(primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray], atol: float) -> tuple[bool, float | None]:
    """(agree, mean absolute difference over the numeric outputs both have; None when there are none)."""
    agree, diffs, n = True, 0.0, 0
    for name, p in primary.items():
        s = shadow.get(name)
        if s is None or s.shape != p.shape:
            agree = False
            continue
        if p.dtype.kind in "biuf" and s.dtype.kind in "biuf":
            d = np.abs(p.astype(np.float64) - s.astype(np.float64))
            if d.size:
                finite = np.isfinite(d)
                diffs += float(d[finite].sum())
                n += int(finite.sum())
                agree = agree and bool(finite.all()) and float(d.max()) <= atol
        elif not np.array_equal(p, s):
            agree = False
    return agree, (diffs / n if n else None)


class ShadowRunner:
    def __init__(self, catalog: Catalog, run: RunVersion, append: AppendRecord | None, registry: Any,
                 settings: ShadowSettings | None = None, rng: random.Random | None = None) -> None:
        self.catalog = catalog
        self.settings = settings or ShadowSettings()
        self._run = run
        self._append = append
        self._rng = rng or random.Random()
        self.metrics = ShadowMetrics(registry)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def mirror(self, shadows: tuple[tuple[str, float], ...], request: InferRequest, primary_version: str,
               primary_out: dict[str, np.ndarray] | None, request_id: str, trace_id: str) -> None:
        """Starts a shadow call per shadow version (sampled); returns at once."""
        for version, sample in shadows:
            if version == primary_version or (sample < 1.0 and self._rng.random() >= sample):
                continue
            if len(self._tasks) >= self.settings.max_inflight:
                self.metrics.dropped.labels(request.model, version, "full").inc()
                continue
            if sum(t.data.nbytes for t in request.inputs) > self.settings.max_request_bytes:
                # Bounds what shadow calls hold: max_inflight x max_request_bytes at most.
                self.metrics.dropped.labels(request.model, version, "too_large").inc()
                continue
            task = asyncio.get_running_loop().create_task(
                self._shadow(version, request, primary_version, primary_out, request_id, trace_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(self, version: str, request: InferRequest, primary_version: str,
                      primary_out: dict[str, np.ndarray] | None, request_id: str, trace_id: str) -> None:
        model, start, timing = request.model, time.monotonic(), Timing()
        info: VersionInfo | None = None
        out: Arrays | None = None
        error: GatewayError | None = None
        try:
            info = self.catalog.get(model, version)
            if not info.ready:
                raise GatewayError(Code.UNAVAILABLE, f"shadow version '{version}' is not ready: {info.reason}")
            arrays, rows = validate_inputs(info, request.inputs)
            deadline = start + self.settings.timeout_ms / 1000.0
            async with asyncio.timeout(self.settings.timeout_ms / 1000.0):
                out = await self._run(info, arrays, rows, deadline, timing)
        except TimeoutError:
            error = GatewayError(Code.DEADLINE_EXCEEDED, f"shadow call to version '{version}' took longer than "
                                 f"{self.settings.timeout_ms:g} ms")
        except asyncio.CancelledError:
            self.metrics.dropped.labels(model, version, "shutdown").inc()
            raise
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is recorded, never raised
            error = as_gateway_error(exc, f"shadow model '{model}' version '{version}'")
        try:
            await self._finish(model, version, request, primary_version, primary_out, request_id, trace_id,
                               info, out, error, timing, time.monotonic() - start)
        except Exception:  # the primary is long answered; nothing may escape this task
            self.metrics.dropped.labels(model, version, "error").inc()
            log.exception("recording a shadow answer of model %s version %s failed", model, version)

    async def _finish(self, model: str, version: str, request: InferRequest, primary_version: str,
                      primary_out: dict[str, np.ndarray] | None, request_id: str, trace_id: str,
                      info: VersionInfo | None, out: Arrays | None, error: GatewayError | None, timing: Timing,
                      total: float) -> None:
        code = error.code.name if error is not None else "OK"
        self.metrics.calls.labels(model, version, code).inc()
        if error is not None:
            reason = {Code.UNAVAILABLE: "unavailable", Code.DEADLINE_EXCEEDED: "timeout"}.get(error.code, "error")
            self.metrics.dropped.labels(model, version, reason).inc()
        else:
            assert out is not None
            self.metrics.latency.labels(model, version).observe(total)
            if primary_out is not None:
                agree, diff = compare(primary_out, out, self.settings.agreement_atol)
                self.metrics.compared.labels(model, version, "agree" if agree else "disagree").inc()
                if diff is not None:
                    self.metrics.abs_diff.labels(model, version).observe(diff)
        if self._append is None:
            return
        outputs = tuple(Tensor(n, spec.datatype, out[n]) for n, spec in info.output_index.items()
                        if n in out) if out is not None and info is not None else ()
        try:
            await self._append(RequestRecord(
                request_id=request_id, time=time.time() - total, model=model, version=version, role="shadow",
                routing_reason=f"shadow of version {primary_version}", inputs=request.inputs, outputs=outputs,
                code=code, error=error.message if error is not None else "", queue_ms=timing.queue_s * 1000.0,
                model_ms=timing.model_s * 1000.0, total_ms=total * 1000.0, batch_rows=timing.batch_rows,
                client=request.client, protocol=request.protocol, trace_id=trace_id))
        except GatewayError:
            self.metrics.dropped.labels(model, version, "log_full").inc()

    async def close(self, drain_s: float) -> None:
        """Lets running shadow calls finish (their records are written) for up to drain_s, then cancels them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
