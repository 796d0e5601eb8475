"""PNG plots of a report (matplotlib, headless Agg backend).

A run: latency percentiles over time above QPS over time. A sweep: p50 and p99 against
achieved throughput, with the latency objective drawn in.
"""

from __future__ import annotations

from typing import Any

from contract.extras import require
from loadtests.report import Report, SweepReport

PURPOSE = "gateway loadtest --plot"


def plot_report(result: Report | SweepReport, path: str) -> None:
    matplotlib = require("matplotlib", "plots", PURPOSE)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _sweep_figure(plt, result) if isinstance(result, SweepReport) else _run_figure(plt, result)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_figure(plt: Any, report: Report) -> Any:
    fig, (lat_ax, qps_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5))
    rows = report.per_second
    seconds = [r["t"] for r in rows]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        lat_ax.plot(seconds, [r[key] for r in rows], marker=".", label=label)
    lat_ax.set_ylabel("latency (ms)")
    _log_axis(lat_ax)
    lat_ax.grid(True, alpha=0.3)
    lat_ax.legend(loc="upper left")
    load = (
        f"open loop {report.requested_rate:g} req/s ({report.arrival})"
        if report.mode == "open"
        else f"closed loop, concurrency {report.concurrency}"
    )
    lat_ax.set_title(
        f"{report.target} {report.model or ''}: {load}\n"
        f"p50 {report.latency_ms['p50']:.2f} ms, p99 {report.latency_ms['p99']:.2f}"
        f" ms, {report.errors} errors",
        fontsize=10,
    )
    qps_ax.plot(seconds, [r["ok"] for r in rows], label="ok/s", color="tab:green")
    qps_ax.plot(seconds, [r["errors"] for r in rows], label="errors/s", color="tab:red")
    if report.requested_rate:
        qps_ax.axhline(report.requested_rate, linestyle="--", color="gray", label="requested")
    qps_ax.set_xlabel("seconds into the measured window (by completion time)")
    qps_ax.set_ylabel("responses per second")
    qps_ax.grid(True, alpha=0.3)
    qps_ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def _sweep_figure(plt: Any, sweep: SweepReport) -> Any:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    achieved = [s.achieved_qps for s in sweep.steps]
    ax.plot(achieved, [s.latency_ms["p50"] for s in sweep.steps], marker="o", label="p50")
    ax.plot(achieved, [s.latency_ms["p99"] for s in sweep.steps], marker="o", label="p99")
    ax.axhline(sweep.slo_p99_ms, linestyle="--", color="tab:red", label=f"SLO p99 {sweep.slo_p99_ms:g} ms")
    if sweep.best_rate is not None:
        ax.axvline(sweep.best_rate, linestyle=":", color="gray", label=f"best {sweep.best_rate:g} req/s")
    ax.set_xlabel("achieved throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    _log_axis(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(f"{sweep.target} {sweep.model or ''}: latency vs throughput", fontsize=10)
    fig.tight_layout()
    return fig


def _log_axis(ax: Any) -> None:
    """Log scale (a stall and a fast median share one panel) with plain-number labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_minor_formatter(NullFormatter())
