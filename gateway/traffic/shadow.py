"""Shadow traffic: a copy of a request goes to each shadow version after the primary has answered.

A shadow's answer is never returned. Its outcome, latency and output are logged under the primary's
request id (role `shadow`) and compared with the primary's output (agreement and mean absolute
difference, as metrics). Shadow work can never delay, fail or overload the primary:
- mirroring a request costs the primary's path one append to the shadow version's lane: no task,
  future or timer per copy;
- each shadow version has one lane task; it lets copies gather for `batch_wait_ms`, sends them as
  one call with its own deadline, then records the answers one per event-loop turn, so a batch of
  answers never holds up primary requests that are ready;
- at most `max_inflight` copies are queued or in calls per gateway process; beyond that a copy is
  dropped; a copy bigger than `max_request_bytes` is never taken;
- every copy that is not sent or not answered is counted (`gateway_shadow_dropped`), never skipped
  silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from contract.tensors import Arrays
from gateway.errors import Code, GatewayError, as_gateway_error
from gateway.plane.batches import batch_key, concat, rows_match, split
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.plane.records import request_record
from gateway.plane.validation import validate_inputs
from gateway.settings import ShadowSettings
from gateway.types import InferRequest, RequestRecord, Tensor, Timing

# One call to a version's replicas (the dispatcher's), carrying a whole batch of copies.
CallVersion = Callable[[VersionInfo, Arrays], Awaitable[Arrays]]
AppendRecord = Callable[[RequestRecord], Awaitable[None]]

log = logging.getLogger(__name__)

_DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class ShadowMetrics:
    def __init__(self, registry: Any) -> None:
        self.calls = Counter(
            "gateway_shadow_requests", "Shadow calls by outcome", ["model", "version", "code"], registry=registry
        )
        self.dropped = Counter(
            "gateway_shadow_dropped",
            "Shadow copies not sent or not answered, by reason",
            ["model", "version", "reason"],
            registry=registry,
        )
        self.compared = Counter(
            "gateway_shadow_comparisons",
            "Shadow answers compared with the primary's, by result (agree | disagree)",
            ["model", "version", "result"],
            registry=registry,
        )
        self.abs_diff = Histogram(
            "gateway_shadow_mean_abs_diff",
            "Mean absolute difference between shadow and primary outputs, per request",
            ["model", "version"],
            buckets=_DIFF_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_shadow_duration_seconds",
            "Latency of answered shadow calls",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )


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


@dataclass(slots=True)
class _Copy:
    request: InferRequest
    primary_version: str
    primary_out: Arrays | None
    request_id: str
    trace_id: str
    queued_at: float


_Batch = list[tuple[_Copy, Arrays, int]]  # one call's copies: (copy, its inputs by name, its rows)
UNBATCHED_CALLS = 16  # a version that does not batch: calls a lane makes at once, one copy each


class _Lane:
    """One shadow version's queued copies and the task that sends them."""

    __slots__ = ("copies", "task", "wake")

    def __init__(self) -> None:
        self.copies: deque[_Copy] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class ShadowRunner:
    def __init__(
        self,
        catalog: Catalog,
        call: CallVersion,
        append: AppendRecord | None,
        registry: Any,
        settings: ShadowSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings or ShadowSettings()
        self._call = call
        self._append = append
        self._rng = rng or random.Random()
        self.metrics = ShadowMetrics(registry)
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._held = 0  # copies queued or in a call, over every lane
        self._closing = False

    @property
    def inflight(self) -> int:
        return self._held

    def mirror(
        self,
        shadows: tuple[tuple[str, float], ...],
        request: InferRequest,
        primary_version: str,
        primary_out: dict[str, np.ndarray] | None,
        request_id: str,
        trace_id: str,
    ) -> None:
        """Queues a copy per shadow version (sampled); returns at once."""
        size: int | None = None
        for version, sample in shadows:
            if version == primary_version or (sample < 1.0 and self._rng.random() >= sample):
                continue
            if self._closing:
                self.metrics.dropped.labels(request.model, version, "shutdown").inc()
                continue
            if self._held >= self.settings.max_inflight:
                self.metrics.dropped.labels(request.model, version, "full").inc()
                continue
            if size is None:
                size = sum(t.data.nbytes for t in request.inputs)
            if size > self.settings.max_request_bytes:
                # Bounds what shadow copies hold: max_inflight x max_request_bytes at most.
                self.metrics.dropped.labels(request.model, version, "too_large").inc()
                continue
            key = (request.model, version)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            if lane.task is None:
                lane.task = asyncio.get_running_loop().create_task(self._run_lane(key, lane))
            lane.copies.append(_Copy(request, primary_version, primary_out, request_id, trace_id, time.monotonic()))
            self._held += 1
            lane.wake.set()

    async def _run_lane(self, key: tuple[str, str], lane: _Lane) -> None:
        wait_s = self.settings.batch_wait_ms / 1000.0
        full = False
        while True:
            while not lane.copies:
                lane.wake.clear()
                await lane.wake.wait()
            if wait_s > 0 and not full and not self._closing:
                await asyncio.sleep(wait_s)  # company: one call for every copy that arrives meanwhile
            full = await self._send(key, lane)

    def _take(self, info: VersionInfo, lane: _Lane, refused: list[RequestRecord | None]) -> tuple[list[_Batch], bool]:
        """The next calls' copies, FIFO. A batching version: one call of copies that share dtypes and
        trailing shapes, up to max_batch_size rows. Otherwise up to UNBATCHED_CALLS calls of one copy each.
        Copies the version refuses are recorded into `refused`. The flag: copies are left that did not fit."""
        batches: list[_Batch] = []
        batch: _Batch = []
        rows, shape_key = 0, None
        while lane.copies:
            copy = lane.copies[0]
            try:
                arrays, n = validate_inputs(info, copy.request.inputs)
            except GatewayError as exc:
                lane.copies.popleft()
                refused.append(
                    self._record(
                        info.model, info.version, copy, info, None, exc, Timing(), time.monotonic() - copy.queued_at
                    )
                )
                continue
            if not info.batching.enabled:
                if len(batches) == UNBATCHED_CALLS:
                    return batches, True
                lane.copies.popleft()
                batches.append([(copy, arrays, n)])
                continue
            k = batch_key(arrays)
            if batch and (k != shape_key or rows + n > info.batching.max_batch_size):
                return [batch], True
            lane.copies.popleft()
            batch.append((copy, arrays, n))
            rows, shape_key = rows + n, k
        return (batches if not info.batching.enabled else [batch] if batch else []), False

    async def _send(self, key: tuple[str, str], lane: _Lane) -> bool:
        """One call for the lane's next batch, then its answers recorded and logged. The flag: more wait.

        A copy stays counted in `inflight` until its record is written, so close() drains the log too.
        """
        model, version = key
        records: list[RequestRecord | None] = []  # one per copy taken out of the lane (None: no log)
        queued = len(lane.copies)
        taken = -1  # copies taken out of the lane; set before the first await
        try:
            try:
                info = self.catalog.get(model, version)
                if not info.ready:
                    raise GatewayError(Code.UNAVAILABLE, f"shadow version '{version}' is not ready: {info.reason}")
                batches, more = self._take(info, lane, records)  # no await in between: mirror() cannot interleave
            except GatewayError as exc:  # every queued copy is answered with the reason
                batches, more = [], False
                while lane.copies:
                    copy = lane.copies.popleft()
                    records.append(
                        self._record(model, version, copy, None, None, exc, Timing(), time.monotonic() - copy.queued_at)
                    )
            taken = queued - len(lane.copies)
            answers = await asyncio.gather(*(self._call_batch(info, b) for b in batches))
            first = True
            for batch, (out, error, started, took) in zip(batches, answers, strict=True):
                counts = [n for _, _, n in batch]
                rows = sum(counts)
                parts = split(out, counts) if out is not None else iter([None] * len(batch))
                for (copy, _, _), part in zip(batch, parts, strict=True):
                    if not first:
                        await asyncio.sleep(0)  # one answer's bookkeeping per loop turn: ready primaries go first
                    first = False
                    timing = Timing(
                        queue_s=started - copy.queued_at, model_s=took, batch_rows=rows, batch_requests=len(batch)
                    )
                    records.append(
                        self._record(model, version, copy, info, part, error, timing, time.monotonic() - copy.queued_at)
                    )
            await self._log(model, version, records)
            self._held -= taken
            return more
        except asyncio.CancelledError:
            self._abandon(model, version, taken, "shutdown")  # taken and not logged
            raise
        except Exception:  # a bug here must not stop the lane or leak its count
            log.exception("shadow copies of model %s version %s failed", model, version)
            self._abandon(model, version, taken if taken >= 0 else queued - len(lane.copies), "error")
            return False

    async def _call_batch(
        self, info: VersionInfo, batch: _Batch
    ) -> tuple[Arrays | None, GatewayError | None, float, float]:
        """(outputs, error, started, took) of the one call carrying `batch`."""
        model, version = info.model, info.version
        started = time.monotonic()
        try:
            merged = concat([arrays for _, arrays, _ in batch])
            async with asyncio.timeout(self.settings.timeout_ms / 1000.0):
                out = await self._call(info, merged)
            total = sum(n for _, _, n in batch)
            if info.batching.enabled and not rows_match(out, total):
                raise GatewayError(
                    Code.INTERNAL,
                    f"shadow version '{version}' returned outputs whose first dimension is not the batch size {total}",
                )
            return out, None, started, time.monotonic() - started
        except TimeoutError:
            error = GatewayError(
                Code.DEADLINE_EXCEEDED,
                f"shadow call to version '{version}' took longer than {self.settings.timeout_ms:g} ms",
            )
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is recorded, never raised
            error = as_gateway_error(exc, f"shadow model '{model}' version '{version}'")
        return None, error, started, time.monotonic() - started

    def _abandon(self, model: str, version: str, count: int, reason: str) -> None:
        self._held -= count
        if count:
            self.metrics.dropped.labels(model, version, reason).inc(count)

    def _record(
        self,
        model: str,
        version: str,
        copy: _Copy,
        info: VersionInfo | None,
        out: Arrays | None,
        error: GatewayError | None,
        timing: Timing,
        total: float,
    ) -> RequestRecord | None:
        """Counts and compares one copy's answer; returns its log record (None when there is no log)."""
        code = error.code.name if error is not None else "OK"
        self.metrics.calls.labels(model, version, code).inc()
        if error is not None:
            reason = {Code.UNAVAILABLE: "unavailable", Code.DEADLINE_EXCEEDED: "timeout"}.get(error.code, "error")
            self.metrics.dropped.labels(model, version, reason).inc()
        else:
            assert out is not None
            self.metrics.latency.labels(model, version).observe(total)
            if copy.primary_out is not None:
                agree, diff = compare(copy.primary_out, out, self.settings.agreement_atol)
                self.metrics.compared.labels(model, version, "agree" if agree else "disagree").inc()
                if diff is not None:
                    self.metrics.abs_diff.labels(model, version).observe(diff)
        if self._append is None:
            return None
        outputs = (
            tuple(Tensor(n, spec.datatype, out[n]) for n, spec in info.output_index.items() if n in out)
            if out is not None and info is not None
            else ()
        )
        return request_record(
            copy.request,
            copy.request_id,
            model=model,
            version=version,
            role="shadow",
            reason=f"shadow of version {copy.primary_version}",
            outputs=outputs,
            error=error,
            timing=timing,
            total_s=total,
            trace_id=copy.trace_id,
        )

    async def _log(self, model: str, version: str, records: list[RequestRecord | None]) -> None:
        """Appends a call's records together (one write of the log's writer); a failure is counted."""
        append = self._append
        if append is None or not records:
            return
        results = await asyncio.gather(*(append(r) for r in records if r is not None), return_exceptions=True)
        for result in results:
            if isinstance(result, GatewayError):
                self.metrics.dropped.labels(model, version, "log_full").inc()
            elif isinstance(result, BaseException):
                self.metrics.dropped.labels(model, version, "error").inc()
                log.error("recording a shadow answer of model %s version %s failed: %r", model, version, result)

    async def close(self, drain_s: float) -> None:
        """Sends and records what is queued for up to drain_s (no more waiting for company), then cancels."""
        self._closing = True
        for lane in self._lanes.values():
            lane.wake.set()
        until = time.monotonic() + drain_s
        while self._held > 0 and time.monotonic() < until:
            await asyncio.sleep(0.01)
        for (model, version), lane in self._lanes.items():
            if lane.task is not None:
                lane.task.cancel()
                await asyncio.gather(lane.task, return_exceptions=True)
                lane.task = None
            if lane.copies:
                self._abandon(model, version, len(lane.copies), "shutdown")
                lane.copies.clear()
