"""Triton-style inference statistics per (model, version), read from Prometheus metrics the data plane adds to.

Answered requests are counted once, by the request metrics (gateway/telemetry/metrics.py); what Triton's
statistics need beyond those (failures' time, decoding time, executions by batch size) is counted here.
With several gateway processes each writes its own multiprocess file and a read sums them all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

from gateway.telemetry.metrics import Metrics

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
    """Success counts and the queue and compute-infer times are the request metrics' own (Metrics.request observes
    them per answered request), read back from their histograms; only what those do not hold is counted here."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.registry = registry = metrics.registry
        labels = ["model", "version"]
        self.ns = Counter(
            "gateway_stats_duration_ns",
            "Cumulative nanoseconds of failed requests (phase fail) and of decoding answered ones (compute_input)",
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
        self._families = {
            metrics.requests._name: _fold_requests,
            metrics.latency._name: _fold_latency,
            metrics.queue._name: _sum_into("queue"),
            metrics.compute._name: _sum_into("compute_infer"),
        }
        self._cells: dict[tuple[str, ...], Any] = {}  # labels() costs a lock and a lookup: reuse the value cells

    def _cell(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = metric.labels(*labels)._value
        return cell

    def request(self, model: str, version: str, ok: bool, total_s: float, input_s: float) -> None:
        """One answered (ok) or failed request that reached a known version; Metrics.request has counted it too."""
        if ok:
            self._cell(self.ns, model, version, "compute_input").inc(int(input_s * 1e9))
            self._cell(self.last, model, version).set(time.time() * 1000.0)
        else:
            self._cell(self.ns, model, version, "fail").inc(int(total_s * 1e9))

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
            fold = self._families.get(family.name, _fold)
            for sample in family.samples:
                labels = sample.labels
                stats = out.get((labels.get("model", ""), labels.get("version", "")))
                if stats is None or sample.name.endswith("_created"):
                    continue
                fold(stats, family.name, sample.name, labels, sample.value)
        for stats in out.values():
            ok = stats.phases["success"]
            known = sum(stats.phases[p].ns for p in ("compute_input", "queue", "compute_infer"))
            stats.phases["compute_output"].ns = max(0, ok.ns - known)
            for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
                stats.phases[phase].count = ok.count
        return list(out.values())

    def _collect(self) -> list[Any]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            families = registry.collect()
        else:
            families = self.registry.collect()
        return [f for f in families if f.name.startswith("gateway_stats_") or f.name in self._families]


def _fold_requests(stats: VersionStats, family: str, sample: str, labels: dict[str, str], value: float) -> None:
    if labels.get("code") != "OK":
        stats.phases["fail"].count += int(value)


def _fold_latency(stats: VersionStats, family: str, sample: str, labels: dict[str, str], value: float) -> None:
    if sample.endswith("_count"):
        stats.phases["success"].count += int(value)
    elif sample.endswith("_sum"):
        stats.phases["success"].ns += round(value * 1e9)


def _sum_into(phase: str) -> Callable[[VersionStats, str, str, dict[str, str], float], None]:
    """A histogram's sum of seconds, added to a phase's nanoseconds (its count is the success count)."""

    def fold(stats: VersionStats, family: str, sample: str, labels: dict[str, str], value: float) -> None:
        if sample.endswith("_sum"):
            stats.phases[phase].ns += round(value * 1e9)

    return fold


def _fold(stats: VersionStats, family: str, sample: str, labels: dict[str, str], value: float) -> None:
    n = int(value)
    if family == "gateway_stats_duration_ns":
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
