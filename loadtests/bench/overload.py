"""Goodput under overload: the same gateway with priority scheduling and with FIFO, side by side.

Starts Ray, a model that takes a fixed time per batch (so saturation is the model's, not the front door's),
and two gateways on the same deployment: one with `overload.scheduling: priority`, one with `fifo`. Then
drives a mixed-class profile with the load tool (`--mix`, each class with its deadline; open loop, Poisson,
latency from each request's intended send time) at multiples of the saturation rate, the same arrivals for
both gateways, and reports per class: goodput (answers within their deadline per second), p99 of answered
requests, and the gateway's refusals by reason; with each point, the gateway's own view (batches, call and
queue time) and the CPU seconds of the driver, the gateway and Ray, to show where the time went.

    python -m loadtests.bench.overload --duration 10s --out overload.json --plot overload.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.config import LoadConfig, parse_duration, parse_mix
from loadtests.harness import cpu_seconds, process, wait_for_file
from loadtests.report import Report
from loadtests.runner import run_load

CALL_S = 0.1  # the model's time per batch: an accelerator-bound model, slow next to the door's cost per request
BATCH = 8  # rows per batch
CAPACITY = BATCH / CALL_S  # requests/s of one row each (one batch in flight at a time)
# The load tool's mixed profile: the critical class alone stays under the capacity at 5x (50% of it), the
# lower classes bring the overload; deadlines of 5, 10 and 40 calls.
MIX = "critical=10,default=30,batch=60"
DEADLINES = "critical=500ms,default=1s,batch=4s"
MODES = ("priority", "fifo")
MODEL_CODE = f"""
import time

def predict(inputs):
    time.sleep({CALL_S})
    return {{"y": inputs["x"]}}
"""


def write_repository(root: Path) -> None:
    from contract.manifest import Batching, Manifest, TensorSpecModel
    from contract.repository import Repository

    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 4])]
    out = [TensorSpecModel(name="y", datatype="FP32", shape=[-1, 4])]
    manifest = Manifest(
        name="fixed",
        version="1",
        runtime="python",
        artifact="model.py",
        inputs=spec,
        outputs=out,
        batching=Batching(max_batch_size=BATCH, max_inflight_batches=1, max_queue_rows=256, replica_max_batch_size=1),
    )

    def write(folder: Path) -> None:
        (folder / "model.py").write_text(MODEL_CODE)

    Repository(root).write_version(manifest, write)


def load_config(address: str, rate: float, duration_s: float, mix: str, deadlines: str) -> LoadConfig:
    return LoadConfig(
        target=f"grpc://{address}",
        model="fixed",
        rate=rate,
        duration_s=duration_s,
        seed=1,  # both gateways get the same arrivals and the same classes
        progress=False,
        timeout_s=max(c.deadline_s or 30.0 for c in parse_mix(mix, deadlines)),
        mix=mix,
        class_deadlines=deadlines,
    )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's counters and histogram sums, by (sample name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def gateway_view(
    before: dict[Any, float], after: dict[Any, float]
) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """Refusals by class and reason, and batches / call / queue time, over one measured window."""

    def delta(name: str, **labels: str) -> float:
        keys = [k for k in after if k[0] == name and all((n, v) in k[1] for n, v in labels.items())]
        return sum(after[k] - before.get(k, 0.0) for k in keys)

    refusals: dict[str, dict[str, int]] = {}
    for (name, labels), _ in after.items():
        if name == "gateway_refusals_total":
            lab = dict(labels)
            count = int(delta(name, **lab))
            if count:
                refusals.setdefault(lab["priority"] or "(fifo)", {})[lab["reason"]] = count
    answered = delta("gateway_compute_duration_seconds_count")
    batches = delta("gateway_batch_rows_count")
    view = {
        "batches": batches,
        "mean_batch_rows": round(delta("gateway_batch_rows_sum") / batches, 2) if batches else 0.0,
        "mean_call_ms": round(1000 * delta("gateway_compute_duration_seconds_sum") / answered, 1) if answered else 0.0,
        "mean_queue_ms": round(1000 * delta("gateway_queue_duration_seconds_sum") / answered, 1) if answered else 0.0,
    }
    return refusals, view


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    address: str, metrics_url: str, pids: dict[str, int], load: float, args: argparse.Namespace
) -> dict[str, Any]:
    run_load(load_config(address, CAPACITY * 0.5, 2.0, args.mix, args.class_deadline))  # warm up: call time known
    before, cpu0, driver0 = scrape(metrics_url), cpu_seconds(pids.values()), own_cpu_s()
    report = run_load(load_config(address, CAPACITY * load, args.duration, args.mix, args.class_deadline))
    after, cpu1, driver1 = scrape(metrics_url), cpu_seconds(pids.values()), own_cpu_s()
    assert isinstance(report, Report)
    refusals, view = gateway_view(before, after)
    classes = {}
    for c in report.classes:
        classes[c.name] = {
            "offered_per_s": c.offered_qps,
            "goodput_per_s": c.goodput_qps,
            "goodput_share": c.goodput_ratio,
            "p99_ms": c.latency_ms["p99"] if c.ok else None,
            "sent": c.sent,
            "good": c.good,
            "late": c.late,
            "errors": c.errors_by_code,
            "gateway_refusals": refusals.get(c.name, {}),
        }
    cpu = {name: round(cpu1[pid][0] - cpu0[pid][0], 2) for name, pid in pids.items()}
    cpu["ray"] = round(sum(cpu1[pid][1] - cpu0[pid][1] for pid in pids.values()), 2)
    cpu["driver"] = round(driver1 - driver0, 2)
    return {
        "classes": classes,
        "gateway": view | ({"fifo_refusals": refusals.get("(fifo)", {})} if "(fifo)" in refusals else {}),
        "cpu_s": cpu,
        "window_s": report.duration_s,
        "send_lag_p99_ms": report.schedule_lag_ms.get("p99"),
        "driver_kept_up": report.kept_up,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    profile = results["profile"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    points = sorted(results["points"], key=lambda p: (p["load"], MODES.index(p["mode"])))
    labels = [f"{p['load']:g}x {p['mode']}" for p in points]
    x = np.arange(len(points))
    width = 0.8 / len(profile)
    for i, cls in enumerate(profile):
        at = x + (i - (len(profile) - 1) / 2) * width
        axes[0].bar(at, [100 * p["classes"][cls]["goodput_share"] for p in points], width, label=cls)
        axes[1].bar(at, [p["classes"][cls]["p99_ms"] or 0 for p in points], width, label=cls)
        refused = [sum(p["classes"][cls]["errors"].values()) for p in points]
        axes[2].bar(at, refused, width, label=cls)
    axes[0].axhline(90, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("goodput, % of offered (answered within deadline)")
    axes[1].set_ylabel("p99 of answered requests (ms)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("refused or shed (requests)")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=20)
        ax.legend()
    deadlines = ", ".join(
        f"{c} {v['share'] * 100:g}% / " + (f"{v['deadline_s']:g} s" if v["deadline_s"] else "none")
        for c, v in profile.items()
    )
    fig.suptitle(
        f"Overload: model {CALL_S * 1000:g} ms per batch of {BATCH} (capacity {CAPACITY:g} req/s); "
        f"class share / deadline: {deadlines}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_gateways(work: Path, stack: ExitStack) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Both gateways (the first starts Ray); their gRPC addresses, metrics URLs and process ids."""
    addresses, metrics, pids = {}, {}, {}
    ray_address = None
    for mode in MODES:
        ready, log = work / f"{mode}.json", work / f"{mode}.log"
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(work / "repository")]
        cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready)]
        cmd += ["--ray-address", ray_address] if ray_address else ["--ray-num-cpus", "2"]
        env = {
            "GATEWAY_EXAMPLE_MODELS": "false",
            "GATEWAY_OVERLOAD__SCHEDULING": mode,
            "GATEWAY_REQUEST_LOG__ENABLED": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        proc = stack.enter_context(process(cmd, log, env, stop_timeout_s=60))
        info = wait_for_file(ready, proc, log, 300, poll_s=0.2)
        ray_address = ray_address or info["ray_address"]
        addresses[mode] = f"127.0.0.1:{info['grpc_port']}"
        metrics[mode] = f"http://127.0.0.1:{info['metrics_port']}/metrics"
        pids[mode] = proc.pid
    return addresses, metrics, pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=parse_duration, default=10.0, help="seconds per point (default 10s)")
    p.add_argument("--loads", default="2,5", help="offered load as multiples of the saturation rate (default 2,5)")
    p.add_argument("--out", type=Path, default=Path("overload.json"), help="JSON results (default overload.json)")
    p.add_argument("--plot", type=Path, default=Path("overload.png"), help="PNG plot (default overload.png)")
    p.add_argument(
        "--mix",
        default=MIX,
        help=f"classes (the gateway's priority names) and their weights, as the load tool's --mix (default {MIX})",
    )
    p.add_argument("--class-deadline", default=DEADLINES, help=f"deadline per class (default {DEADLINES})")
    args = p.parse_args(argv)
    loads = [float(v) for v in args.loads.split(",")]
    try:
        classes = parse_mix(args.mix, args.class_deadline)
    except ValueError as exc:
        p.error(str(exc))
    total = sum(c.weight for c in classes)
    points = []
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        write_repository(work / "repository")
        addresses, metrics, pids = start_gateways(work, stack)
        for load in loads:
            for mode in MODES:
                point = {"load": load, "mode": mode, "offered_per_s": CAPACITY * load}
                point |= measure(addresses[mode], metrics[mode], pids, load, args)
                points.append(point)
                print(_line(point), flush=True)
    results = {
        "capacity_per_s": CAPACITY,
        "call_ms": CALL_S * 1000,
        "batch": BATCH,
        "profile": {c.name: {"share": round(c.weight / total, 4), "deadline_s": c.deadline_s} for c in classes},
        "duration_s": args.duration,
        "cpu_count": os.cpu_count(),
        "points": points,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    return 0


def _line(point: dict[str, Any]) -> str:
    parts = []
    for cls, c in point["classes"].items():
        p99 = f"{c['p99_ms']:.0f}" if c["p99_ms"] is not None else "-"
        refused = sum(c["errors"].values())
        parts.append(
            f"{cls}: goodput {c['goodput_per_s']:.0f}/{c['offered_per_s']:.0f}/s ({c['goodput_share']:.0%}) "
            f"p99 {p99} ms refused {refused} late {c['late']}"
        )
    g, cpu = point["gateway"], point["cpu_s"]
    return (
        f"{point['load']:g}x {point['mode']:<8} " + " | ".join(parts) + f"\n    gateway: {g['batches']:.0f} batches of "
        f"{g['mean_batch_rows']} rows, call {g['mean_call_ms']} ms, queue {g['mean_queue_ms']} ms; cpu s {cpu}; "
        f"send lag p99 {point['send_lag_p99_ms']} ms; load average {point['load_average_1m']}"
    )


if __name__ == "__main__":
    sys.exit(main())
