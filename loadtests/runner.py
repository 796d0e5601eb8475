"""Composition root of a load run: inputs -> payloads -> worker plans -> merged Report.

``run_load`` is the Python API behind ``gateway loadtest``; it also writes the JSON report
and plot when the config names paths.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from loadtests.config import LoadConfig, Target, parse_sweep, parse_target
from loadtests.inputs import InferCall, random_calls, read_replay
from loadtests.metadata import fetch_metadata
from loadtests.payloads import build_payloads, class_headers
from loadtests.processes import run_plans
from loadtests.progress import Progress
from loadtests.report import Report, SweepReport, build_report, meets_slo
from loadtests.worker import ClassPlan, WorkerPlan

_SWEEP_PATIENCE = 2


def prepare_calls(config: LoadConfig, target: Target) -> list[InferCall]:
    """The request pool: recorded requests from ``input_file``, else random ones from metadata."""
    if config.input_file:
        with open(config.input_file, encoding="utf-8") as lines:
            calls, skipped = read_replay(lines, model=config.model, version=config.model_version)
        if not calls:
            raise ValueError(f"{config.input_file}: no usable request records ({skipped} skipped)")
        return calls
    assert config.model is not None
    metadata = fetch_metadata(target, config.model, config.model_version, timeout_s=min(config.timeout_s, 10.0))
    return random_calls(
        metadata,
        model=config.model,
        version=config.model_version,
        batch_rows=config.batch_rows,
        count=config.pool_size,
        seed=config.seed,
    )


def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def class_pools(
    config: LoadConfig, target: Target, calls: list[InferCall]
) -> tuple[list[bytes], tuple[ClassPlan, ...]]:
    """The payload pool and, with --mix, one slice of it per class (HTTP requests carry their class's headers
    in their bytes, so each class has its own; gRPC classes share one pool and differ in metadata)."""
    classes = config.classes
    if not classes:
        return build_payloads(target, calls, http_binary=config.http_binary), ()
    payloads: list[bytes] = []
    plans = []
    shared = build_payloads(target, calls, http_binary=config.http_binary) if target.protocol == "grpc" else None
    for traffic in classes:
        headers = class_headers(
            traffic, priority_header=config.priority_header, key_header=config.key_header, protocol=target.protocol
        )
        if shared is not None:
            first, count = 0, len(shared)
        else:
            first = len(payloads)
            payloads += build_payloads(target, calls, http_binary=config.http_binary, extra_headers=headers)
            count = len(payloads) - first
        plans.append(ClassPlan(traffic.name, traffic.weight, traffic.deadline_s, headers, first, count))
    return (shared if shared is not None else payloads), tuple(plans)


def make_plans(
    config: LoadConfig,
    target: Target,
    payloads: list[bytes],
    rate: float | None,
    classes: tuple[ClassPlan, ...] = (),
) -> list[WorkerPlan]:
    shares = config.processes
    plans = []
    for share in range(shares):
        plans.append(
            WorkerPlan(
                protocol=target.protocol,
                host=target.host,
                port=target.port,
                payloads=payloads,
                mode="open" if rate is not None else "closed",
                rate=rate or 0.0,
                arrival=config.arrival,
                share=share,
                shares=shares,
                concurrency=_split(config.concurrency or 0, shares, share),
                warmup_s=config.warmup_s,
                duration_s=config.duration_s,
                max_requests=(
                    None if config.max_requests is None else max(1, _split(config.max_requests, shares, share))
                ),
                max_inflight=max(1, _split(config.max_inflight, shares, share)),
                connections=math.ceil(config.connections / shares) if config.connections else 0,
                timeout_s=config.timeout_s,
                drain_timeout_s=config.drain_timeout_s,
                seed=config.seed,
                streaming=config.streaming,
                shared_memory=config.shared_memory,
                classes=classes,
            )
        )
    return plans


def _run_once(
    config: LoadConfig,
    target: Target,
    payloads: list[bytes],
    rate: float | None,
    label: str,
    classes: tuple[ClassPlan, ...] = (),
) -> Report:
    plans = make_plans(config, target, payloads, rate, classes)
    started = datetime.now(UTC)
    progress = Progress(config.warmup_s + config.duration_s, label, enabled=config.progress, warmup_s=config.warmup_s)
    try:
        results = run_plans(plans, progress)
    finally:
        progress.close()
    return build_report(
        results,
        target=str(target),
        model=config.model,
        model_version=config.model_version,
        mode=plans[0].mode,
        arrival=config.arrival,
        requested_rate=rate,
        concurrency=config.concurrency,
        warmup_s=config.warmup_s,
        batch_rows=config.batch_rows,
        started=started,
        classes=classes,
    )


def run_load(config: LoadConfig) -> Report | SweepReport:
    """Run the configured load (or sweep) and return its report; raises on setup failures.

    It runs its own event loop: from async code use ``await asyncio.to_thread(run_load, c)``.
    With ``processes > 1`` generator processes are spawned, so a calling script needs the
    ``if __name__ == "__main__":`` guard.
    """
    config.validate()
    target = parse_target(config.target)
    payloads, classes = class_pools(config, target, prepare_calls(config, target))
    result: Report | SweepReport
    if config.sweep is None:
        load = f"{config.rate:g}/s" if config.rate is not None else f"c={config.concurrency}"
        result = _run_once(config, target, payloads, config.rate, f"{target.protocol} {load}", classes)
    else:
        result = run_sweep(config, target, payloads, classes)
    write_outputs(config, result)
    return result


def run_sweep(
    config: LoadConfig, target: Target, payloads: list[bytes], classes: tuple[ClassPlan, ...] = ()
) -> SweepReport:
    """Open-loop steps of increasing rate, until two steps in a row miss the objective."""
    assert config.slo_p99_ms is not None and config.sweep is not None
    rates = parse_sweep(config.sweep)
    steps: list[Report] = []
    best: float | None = None
    misses = 0
    for number, rate in enumerate(rates, start=1):
        step = _run_once(config, target, payloads, rate, f"step {number}/{len(rates)} {rate:g}/s", classes)
        steps.append(step)
        if meets_slo(step, config.slo_p99_ms):
            best, misses = rate, 0
            continue
        misses += 1
        # One miss can be a hiccup; two in a row is saturation, where every higher rate only
        # queues more, so stop rather than pile on.
        if misses == _SWEEP_PATIENCE:
            break
    return SweepReport(
        target=str(target), model=config.model, slo_p99_ms=config.slo_p99_ms, best_rate=best, steps=steps
    )


def write_outputs(config: LoadConfig, result: Report | SweepReport) -> None:
    if config.report_path:
        Path(config.report_path).write_text(result.to_json() + "\n", encoding="utf-8")
    if config.plot_path:
        from loadtests.plot import plot_report

        plot_report(result, config.plot_path)
