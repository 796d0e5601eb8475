"""Triton-style inference statistics per (model, version), kept as Prometheus counters the data plane adds to.

With several gateway processes each writes its own multiprocess file and a read sums them all.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class VersionStats:
    """What ModelStatistics reports for one version (Triton's field names)."""

    model: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    phases: dict[str, Duration] = field(default_factory=lambda: {p: Duration() for p in PHASES})
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> model executions of that size


class InferenceStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ["model", "version"]
        self.count = Counter(
            "gateway_stats_requests", "Requests by outcome (success/fail)", [*labels, "outcome"], registry=registry
        )
        self.ns = Counter(
            "gateway_stats_duration_ns",
            "Cumulative nanoseconds per request phase",
            [*labels, "phase"],
            registry=registry,
        )
        self.inferences = Counter("gateway_stats_inferences", "Rows inferred", labels, registry=registry)
        self.executions = Counter("gateway_stats_executions", "Model executions (batches)", labels, registry=registry)
        self.batch_count = Counter(
            "gateway_stats_batch_executions",
            "Model executions by batch size",
            [*labels, "batch_size"],
            registry=registry,
        )
        self.batch_ns = Counter(
            "gateway_stats_batch_compute_ns",
            "Cumulative nanoseconds of model executions by batch size",
            [*labels, "batch_size"],
            registry=registry,
        )
        self.last = Gauge(
            "gateway_stats_last_inference_ms",
            "Unix milliseconds of the last answered request",
            labels,
            registry=registry,
            multiprocess_mode="max",
        )
        self._cells: dict[tuple[str, ...], Any] = {}  # labels() costs a lock and a lookup: reuse the value cells

    def _cell(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = metric.labels(*labels)._value
        return cell

    def request(
        self, model: str, version: str, ok: bool, total_s: float, queue_s: float, infer_s: float, input_s: float
    ) -> None:
        """One answered (ok) or failed request that reached a known version."""
        cell = self._cell
        outcome = "success" if ok else "fail"
        cell(self.count, model, version, outcome).inc(1)
        cell(self.ns, model, version, outcome).inc(int(total_s * 1e9))
        if ok:
            output_s = max(0.0, total_s - input_s - queue_s - infer_s)
            cell(self.ns, model, version, "queue").inc(int(queue_s * 1e9))
            cell(self.ns, model, version, "compute_input").inc(int(input_s * 1e9))
            cell(self.ns, model, version, "compute_infer").inc(int(infer_s * 1e9))
            cell(self.ns, model, version, "compute_output").inc(int(output_s * 1e9))
            cell(self.last, model, version).set(time.time() * 1000.0)

    def execution(self, model: str, version: str, rows: int, seconds: float) -> None:
        """One successful model execution (a batch of `rows` rows)."""
        cell = self._cell
        cell(self.inferences, model, version).inc(rows)
        cell(self.executions, model, version).inc(1)
        cell(self.batch_count, model, version, str(rows)).inc(1)
        cell(self.batch_ns, model, version, str(rows)).inc(int(seconds * 1e9))

    def read(self, versions: list[tuple[str, str]]) -> list[VersionStats]:
        """The statistics of the given versions, summed over every gateway process."""
        out = {key: VersionStats(*key) for key in versions}
        for family in self._collect():
            for sample in family.samples:
                labels = sample.labels
                stats = out.get((labels.get("model", ""), labels.get("version", "")))
                if stats is None or sample.name.endswith("_created"):
                    continue
                _fold(stats, family.name, labels, sample.value)
        for stats in out.values():
            ok = stats.phases["success"].count
            for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
                stats.phases[phase].count = ok
        return list(out.values())

    def _collect(self) -> list[Any]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return [f for f in registry.collect() if f.name.startswith("gateway_stats_")]
        return [f for f in self.registry.collect() if f.name.startswith("gateway_stats_")]


def _fold(stats: VersionStats, family: str, labels: dict[str, str], value: float) -> None:
    n = int(value)
    if family == "gateway_stats_requests":
        stats.phases[labels["outcome"]].count += n
    elif family == "gateway_stats_duration_ns":
        stats.phases[labels["phase"]].ns += n
    elif family == "gateway_stats_inferences":
        stats.inference_count += n
    elif family == "gateway_stats_executions":
        stats.execution_count += n
    elif family == "gateway_stats_batch_executions":
        stats.batches.setdefault(int(labels["batch_size"]), Duration()).count += n
    elif family == "gateway_stats_batch_compute_ns":
        stats.batches.setdefault(int(labels["batch_size"]), Duration()).ns += n
    elif family == "gateway_stats_last_inference_ms":
        stats.last_inference_ms = max(stats.last_inference_ms, n)
