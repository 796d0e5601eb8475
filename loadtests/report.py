"""Merges per-process results into the run's Report: JSON form and the human summary table.

Invariant: sent == ok + sum(errors_by_code.values()); latency percentiles cover successful
responses only (fast errors would otherwise flatter the server).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loadtests.histogram import Histogram, coarse_value, percentiles_of
from loadtests.recorder import ClassStats, SecondStats, WorkerResult

if TYPE_CHECKING:
    from loadtests.worker import ClassPlan

# Generator lag beyond this (p99, open loop) means the tool, not the server, set the pace.
MAX_LAG_P99_MS = 10.0
# A sweep step with more failed requests than this does not meet the objective.
MAX_ERROR_RATIO = 0.001
_QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


@dataclass
class ClassReport:
    """One traffic class of a mixed profile: goodput is answers within the class's deadline per second."""

    name: str
    share: float  # its weight's share of the mix
    deadline_ms: float | None
    sent: int
    ok: int
    good: int  # answered within the deadline (all answers without one)
    late: int  # answered after the deadline
    errors_by_code: dict[str, int]
    offered_qps: float  # sent per second of the window
    goodput_qps: float
    goodput_ratio: float  # good / sent
    latency_ms: dict[str, float]  # answered requests only


@dataclass
class Report:
    """The outcome of one load run (one sweep step)."""

    target: str
    model: str | None
    model_version: str
    mode: str  # "open" or "closed"
    arrival: str | None
    requested_rate: float | None
    concurrency: int | None
    duration_s: float  # measured window actually run
    warmup_s: float
    processes: int
    batch_rows: int
    scheduled: int  # open loop: sends due in the window (= sent + late); closed: = sent
    sent: int  # == ok + errors
    ok: int
    errors: int
    errors_by_code: dict[str, int]  # gRPC status name, HTTP_<status>, TIMEOUT, CONNECTION_...
    late: int  # open loop: due but never sent because in-flight was at --max-inflight
    achieved_qps: float  # sent per second of the window
    ok_qps: float
    latency_ms: dict[str, float]  # p50 p90 p99 p999 max min mean, successful requests only
    schedule_lag_ms: dict[str, float]  # open loop: actual minus intended send time
    peak_inflight: int
    per_second: list[dict[str, float]]  # t, qps, ok, errors, p50_ms, p99_ms, max_ms
    generator_cpu_percent: float  # summed over generator processes (100 = one core)
    kept_up: bool  # open loop: nothing late and send lag p99 <= 10 ms; closed loop: True
    warnings: list[str] = field(default_factory=list)
    started_at: str = ""
    classes: list[ClassReport] = field(default_factory=list)  # with --mix: per class, in the mix's order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class SweepReport:
    """A rate sweep: one Report per step and the best rate that met the objective."""

    target: str
    model: str | None
    slo_p99_ms: float
    best_rate: float | None
    steps: list[Report]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def build_report(
    results: list[WorkerResult],
    *,
    target: str,
    model: str | None,
    model_version: str,
    mode: str,
    arrival: str | None,
    requested_rate: float | None,
    concurrency: int | None,
    warmup_s: float,
    batch_rows: int,
    started: datetime | None = None,
    classes: Sequence[ClassPlan] = (),
) -> Report:
    latency, lag = Histogram(), Histogram()
    errors: dict[str, int] = {}
    series: dict[int, SecondStats] = {}
    for res in results:
        latency.merge(res.latency)
        lag.merge(res.lag)
        for code, count in res.errors_by_code.items():
            errors[code] = errors.get(code, 0) + count
        for second, stats in res.series.items():
            merged = series.setdefault(second, SecondStats())
            merged.ok += stats.ok
            merged.errors += stats.errors
            merged.max_us = max(merged.max_us, stats.max_us)
            for index, count in stats.coarse.items():
                merged.coarse[index] = merged.coarse.get(index, 0) + count
    sent = sum(r.sent for r in results)
    ok = sum(r.ok for r in results)
    late = sum(r.late for r in results)
    scheduled = sum(r.scheduled for r in results)
    window = max(r.window_s for r in results)
    wall = max(r.wall_s for r in results)
    cpu_percent = 100.0 * sum(r.cpu_s for r in results) / wall if wall > 0 else 0.0
    latency_ms = _latency_ms(latency)
    lag_ms = _lag_ms(lag) if mode == "open" else {}
    warnings = []
    kept_up = True
    if mode == "open":
        if late:
            kept_up = False
            warnings.append(f"{late} requests were dropped: in-flight reached --max-inflight")
        if lag_ms.get("p99", 0.0) > MAX_LAG_P99_MS:
            kept_up = False
            warnings.append(
                f"generator fell behind schedule (send lag p99 {lag_ms['p99']:.1f} ms > {MAX_LAG_P99_MS:.0f} ms)"
            )
    if cpu_percent > 85.0 * len(results):
        warnings.append(
            f"generator CPU at {cpu_percent:.0f}% over {len(results)} process(es): "
            "add --processes or cores; latency may include generator delay"
        )
    if ok + sum(errors.values()) != sent:
        warnings.append("internal: sent != ok + errors")
    return Report(
        target=target,
        model=model,
        model_version=model_version,
        mode=mode,
        arrival=arrival if mode == "open" else None,
        requested_rate=requested_rate if mode == "open" else None,
        concurrency=concurrency if mode == "closed" else None,
        duration_s=round(window, 3),
        warmup_s=warmup_s,
        processes=len(results),
        batch_rows=batch_rows,
        scheduled=scheduled if mode == "open" else sent,
        sent=sent,
        ok=ok,
        errors=sum(errors.values()),
        errors_by_code=dict(sorted(errors.items())),
        late=late,
        achieved_qps=round(sent / window, 2),
        ok_qps=round(ok / window, 2),
        latency_ms=latency_ms,
        schedule_lag_ms=lag_ms,
        peak_inflight=sum(r.peak_inflight for r in results),
        per_second=_per_second(series),
        generator_cpu_percent=round(cpu_percent, 1),
        kept_up=kept_up,
        warnings=warnings,
        started_at=(started or datetime.now(UTC)).isoformat(timespec="seconds"),
        classes=_classes(results, classes, window),
    )


def _classes(results: list[WorkerResult], plans: Sequence[ClassPlan], window: float) -> list[ClassReport]:
    total = sum(c.weight for c in plans)
    out = []
    for kind, plan in enumerate(plans):
        merged = ClassStats()
        for res in results:
            stats = res.classes[kind]
            merged.sent += stats.sent
            merged.ok += stats.ok
            merged.good += stats.good
            merged.latency.merge(stats.latency)
            for code, count in stats.errors_by_code.items():
                merged.errors_by_code[code] = merged.errors_by_code.get(code, 0) + count
        lat = _latency_ms(merged.latency)
        out.append(
            ClassReport(
                name=plan.name,
                share=round(plan.weight / total, 4),
                deadline_ms=None if plan.deadline_s is None else round(plan.deadline_s * 1000, 3),
                sent=merged.sent,
                ok=merged.ok,
                good=merged.good,
                late=merged.ok - merged.good,
                errors_by_code=dict(sorted(merged.errors_by_code.items())),
                offered_qps=round(merged.sent / window, 2),
                goodput_qps=round(merged.good / window, 2),
                goodput_ratio=round(merged.good / merged.sent, 4) if merged.sent else 0.0,
                latency_ms={k: lat[k] for k in ("p50", "p99", "max")},
            )
        )
    return out


def _latency_ms(hist: Histogram) -> dict[str, float]:
    values = hist.percentiles(_QUANTILES.values())
    out = {name: round(v / 1000.0, 3) for name, v in zip(_QUANTILES, values, strict=True)}
    out["max"] = round(hist.max_us / 1000.0, 3) if hist.total else 0.0
    out["min"] = round(hist.min_us / 1000.0, 3) if hist.total else 0.0
    out["mean"] = round(hist.mean_us() / 1000.0, 3)
    return out


def _lag_ms(hist: Histogram) -> dict[str, float]:
    p50, p99 = hist.percentiles([50.0, 99.0])
    return {
        "p50": round(p50 / 1000.0, 3),
        "p99": round(p99 / 1000.0, 3),
        "max": round(hist.max_us / 1000.0, 3) if hist.total else 0.0,
    }


def _per_second(series: dict[int, SecondStats]) -> list[dict[str, float]]:
    if not series:
        return []
    rows = []
    for second in range(min(series), max(series) + 1):
        stats = series.get(second, SecondStats())
        # Coarse buckets can overshoot the exact max by half a bucket: clamp like Histogram.
        p50, p99 = (min(v, stats.max_us) for v in percentiles_of(stats.coarse, [50.0, 99.0], coarse_value))
        rows.append(
            {
                "t": second,
                "qps": stats.ok + stats.errors,
                "ok": stats.ok,
                "errors": stats.errors,
                "p50_ms": round(p50 / 1000.0, 3),
                "p99_ms": round(p99 / 1000.0, 3),
                "max_ms": round(stats.max_us / 1000.0, 3),
            }
        )
    return rows


def summary(report: Report) -> str:
    """The human-readable table printed at the end of a run."""
    load = (
        f"open loop, {report.arrival} arrivals at {report.requested_rate:g} req/s"
        if report.mode == "open"
        else f"closed loop, concurrency {report.concurrency}"
    )
    lat = report.latency_ms
    rows = [
        (
            "target",
            f"{report.target}  model={report.model or '(from file)'}"
            + (f" version={report.model_version}" if report.model_version else ""),
        ),
        ("load", f"{load}, {report.processes} process(es), {report.batch_rows} row(s)/request"),
        ("window", f"{report.duration_s:.1f} s measured after {report.warmup_s:g} s warmup"),
        (
            "requests",
            f"sent {report.sent}  ok {report.ok}  errors {report.errors}"
            + (f"  late/dropped {report.late}" if report.mode == "open" else ""),
        ),
        ("throughput", f"{report.achieved_qps:.1f} req/s sent, {report.ok_qps:.1f} req/s ok"),
        ("latency ms", "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p999", "max", "mean"))),
    ]
    if report.errors_by_code:
        rows.append(("errors", "  ".join(f"{c} {n}" for c, n in report.errors_by_code.items())))
    if report.mode == "open":
        lag = report.schedule_lag_ms
        rows.append(
            (
                "send lag ms",
                f"p50 {lag['p50']:.2f}  p99 {lag['p99']:.2f}  "
                f"max {lag['max']:.2f}  (kept up: "
                f"{'yes' if report.kept_up else 'NO'})",
            )
        )
    rows.append(("generator", f"{report.generator_cpu_percent:.0f}% CPU, peak in-flight {report.peak_inflight}"))
    for c in report.classes:
        deadline = f"deadline {c.deadline_ms:g} ms" if c.deadline_ms is not None else "no deadline"
        errors = "  ".join(f"{code} {n}" for code, n in c.errors_by_code.items()) or "no errors"
        rows.append(
            (
                f"class {c.name}",
                f"{c.share:.0%} of requests, {deadline}: goodput {c.goodput_qps:.1f} of {c.offered_qps:.1f} req/s "
                f"({c.goodput_ratio:.0%}), p99 {c.latency_ms['p99']:.1f} ms, late {c.late}, {errors}",
            )
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def meets_slo(report: Report, slo_p99_ms: float) -> bool:
    """p99 within the objective, the generator kept up, and (almost) nothing failed."""
    error_ratio = report.errors / report.sent if report.sent else 1.0
    return (
        report.ok > 0 and report.kept_up and error_ratio <= MAX_ERROR_RATIO and report.latency_ms["p99"] <= slo_p99_ms
    )


def sweep_summary(sweep: SweepReport) -> str:
    lines = [
        f"{'rate':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'kept up':>7}  SLO p99 <= {sweep.slo_p99_ms:g} ms"
    ]
    for step in sweep.steps:
        meets = meets_slo(step, sweep.slo_p99_ms)
        lines.append(
            f"{step.requested_rate or 0:>8g} {step.achieved_qps:>9.1f} "
            f"{step.latency_ms['p50']:>8.2f} {step.latency_ms['p99']:>8.2f} "
            f"{step.errors:>7} {'yes' if step.kept_up else 'NO':>7}  "
            f"{'ok' if meets else 'FAIL'}"
        )
    best = f"{sweep.best_rate:g} req/s" if sweep.best_rate is not None else "none"
    lines.append(f"highest rate meeting the objective: {best}")
    return "\n".join(lines)
