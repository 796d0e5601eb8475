"""Prometheus metrics (port 8002 by default), named in the spirit of Triton's; labels stay bounded.

Labels are model, version, status code, refusal reason, priority class and tenant (names from settings and
the tenant file) only; never request ids, API keys or client addresses.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_inference_requests", "Inference requests by outcome", ["model", "version", "code"], registry=r
        )
        self.latency = Histogram(
            "gateway_inference_request_duration_seconds",
            "End-to-end inference latency inside the gateway",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "gateway_queue_duration_seconds",
            "Time a request waited in the gateway's batch queue",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "gateway_compute_duration_seconds",
            "Time of the replica call carrying a request's batch (transport + model)",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "gateway_batch_rows",
            "Rows per call to a model version's replicas",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "gateway_batch_requests",
            "Requests coalesced into one call",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.weight = Gauge(
            "gateway_traffic_weight",
            "Percent of the model's unpinned traffic the version gets",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "gateway_model_ready",
            "1 when the model version can serve",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.outcome_join = Gauge(
            "gateway_outcome_join_active",
            "1 while this gateway joins the experiments' outcomes for its log root (one gateway per root at a time)",
            registry=r,
            multiprocess_mode="max",
        )

        self.refusals = Counter(
            "gateway_refusals",
            "Requests refused before or instead of a model call, by reason, priority class and tenant",
            ["model", "reason", "priority", "tenant"],
            registry=r,
        )

        # labels() costs a lock and a lookup; the hot path reuses children (label sets are bounded).
        self._children: dict[tuple[str, ...], Any] = {}
        # Per (model, version, code): the value cells one request updates (see _Cells).
        self._cells: dict[tuple[str, str, str], _RequestCells] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(
        self, model: str, version: str, code: str, seconds: float, queue_s: float = 0.0, compute_s: float = 0.0
    ) -> None:
        cells = self._cells.get((model, version, code))
        if cells is None:
            cells = self._cells[(model, version, code)] = self._request_cells(model, version, code)
        count, timed = cells
        count.inc(1)
        if timed is not None:  # answered requests only: failures have no latency worth charting
            latency, queue, compute = timed
            latency.observe(seconds)
            if compute_s > 0:
                queue.observe(queue_s)
                compute.observe(compute_s)

    def _request_cells(self, model: str, version: str, code: str) -> _RequestCells:
        count = self._child(self.requests, model, version, code)._value
        if code != "OK":
            return count, None
        latency, queue, compute = (
            _Cells(self._child(h, model, version)) for h in (self.latency, self.queue, self.compute)
        )
        return count, (latency, queue, compute)

    def batch(self, model: str, version: str, rows: int, requests: int) -> None:
        self._child(self.batch_rows, model, version).observe(rows)
        self._child(self.batch_requests, model, version).observe(requests)

    def refusal(self, model: str, reason: str, priority: str, tenant: str) -> None:
        self._child(self.refusals, model, reason, priority, tenant).inc()

    def set_outcome_join(self, active: bool) -> None:
        self.outcome_join.set(1 if active else 0)

    def set_ready(self, model: str, version: str, ready: bool) -> None:
        self.ready.labels(model, version).set(1 if ready else 0)

    def set_weights(self, table: Any, catalog: Any) -> None:
        """Every catalog version's share under the traffic table (a model without a split: its default)."""
        for info in catalog.all():
            split = table.models.get(info.model)
            if split is not None:
                share = split.weights.get(info.version, 0)
            else:
                try:
                    share = 100 if catalog.default_version(info.model).version == info.version else 0
                except Exception:  # noqa: BLE001 - no ready version: nobody gets traffic
                    share = 0
            self.weight.labels(info.model, info.version).set(share)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint in a thread; returns the bound port.

        With several worker processes (PROMETHEUS_MULTIPROC_DIR set), it sums every worker's values.
        """
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return int(server.server_port)


class _Cells:
    """One labelled histogram's value cells, updated as Histogram.observe() does (same buckets, same sum)
    without its per-call checks and linear bucket search: a few microseconds less on every request.
    Relies on prometheus_client's Histogram layout (`_upper_bounds`, `_buckets`, `_sum`), pinned in
    pyproject.toml; tests/unit/test_metrics.py compares the two."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child: Any) -> None:
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)  # ends with +Inf
        self.buckets: list[Any] = child._buckets
        self.sum: Any = child._sum

    def observe(self, value: float) -> None:
        self.sum.inc(value)
        if value == value:  # NaN counts in no bucket, as in observe()
            self.buckets[bisect_left(self.bounds, value)].inc(1)  # the first bucket whose bound is >= value


_RequestCells = tuple[Any, "tuple[_Cells, _Cells, _Cells] | None"]
