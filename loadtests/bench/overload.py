"""Goodput under overload: the same gateway with priority scheduling and with FIFO, side by side.

Starts Ray, a model that takes a fixed time per batch (so saturation is known), and two gateways on the
same deployment: one with `overload.scheduling: priority`, one with `fifo`. Then drives a mixed-class
profile (critical / default / batch, each with its own deadline) open loop at 2x and 5x the saturation
rate, latency measured from each request's intended send time (coordinated omission corrected), and
reports per class: goodput (answers within their deadline per second), p99 of answered requests, and
refusals. Writes JSON and a PNG plot.

    python -m loadtests.bench.overload --duration 10s --out overload.json --plot overload.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.config import parse_duration
from loadtests.harness import process, wait_for_file

CALL_S = 0.02  # the model's time per batch
BATCH = 8  # rows per batch
CAPACITY = BATCH / CALL_S  # requests/s of one row each (one batch in flight at a time)
# Class: (share of offered requests, deadline in seconds)
PROFILE = {"critical": (0.2, 0.25), "default": (0.3, 0.5), "batch": (0.5, 2.0)}
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


async def drive(address: str, rate: float, duration_s: float, seed: int = 1) -> dict[str, Any]:
    """Open loop: Poisson arrivals at `rate`, each request's class drawn from PROFILE; latency from the
    intended send time, so a stalled sender cannot hide queueing."""
    from gateway._proto import inference_pb2 as pb

    rng = np.random.default_rng(seed)
    names = list(PROFILE)
    shares = np.array([PROFILE[n][0] for n in names])
    req = pb.ModelInferRequest(model_name="fixed")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    payload = req.SerializeToString()
    stats: dict[str, dict[str, Any]] = {n: {"sent": 0, "good": 0, "late": 0, "refused": {}, "lat": []} for n in names}
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        tasks = []

        async def one(cls: str, intended: float) -> None:
            deadline = PROFILE[cls][1]
            s = stats[cls]
            s["sent"] += 1
            try:
                await call(payload, metadata=(("x-priority", cls),), timeout=deadline)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                s["refused"][code] = s["refused"].get(code, 0) + 1
                return
            took = time.perf_counter() - intended
            s["lat"].append(took)
            s["good" if took <= deadline else "late"] += 1

        start = time.perf_counter() + 0.2
        t = 0.0
        while t < duration_s:
            t += rng.exponential(1.0 / rate)
            intended = start + t
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cls = names[int(rng.choice(len(names), p=shares))]
            tasks.append(asyncio.ensure_future(one(cls, intended)))
        await asyncio.gather(*tasks)
    out: dict[str, Any] = {}
    for n, s in stats.items():
        lat = np.array(s["lat"]) * 1000
        offered = rate * PROFILE[n][0]
        out[n] = {
            "offered_per_s": offered,
            "goodput_per_s": s["good"] / duration_s,
            "goodput_share": s["good"] / max(s["sent"], 1),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "late": s["late"],
            "refused": s["refused"],
            "sent": s["sent"],
        }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    points = sorted(results["points"], key=lambda p: (p["load"], p["mode"]))
    labels = [f"{p['load']:g}x {p['mode']}" for p in points]
    x = np.arange(len(points))
    for i, cls in enumerate(PROFILE):
        share = [100 * p["classes"][cls]["goodput_share"] for p in points]
        axes[0].bar(x + (i - 1) * 0.27, share, 0.27, label=cls)
        p99 = [p["classes"][cls]["p99_ms"] or 0 for p in points]
        axes[1].bar(x + (i - 1) * 0.27, p99, 0.27, label=cls)
    axes[0].axhline(90, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("goodput, % of offered (answered within deadline)")
    axes[1].set_ylabel("p99 of answered requests (ms)")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=20)
        ax.legend()
    fig.suptitle(f"Overload: capacity {CAPACITY:g} req/s; priority scheduling vs FIFO")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=parse_duration, default=10.0, help="seconds per point (default 10s)")
    p.add_argument("--loads", default="2,5", help="offered load as multiples of the saturation rate")
    p.add_argument("--out", type=Path, default=Path("overload.json"))
    p.add_argument("--plot", type=Path, default=Path("overload.png"))
    args = p.parse_args(argv)
    loads = [float(v) for v in args.loads.split(",")]
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        write_repository(work / "repository")
        addresses: dict[str, str] = {}
        ray_address = None
        for mode in ("priority", "fifo"):
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
        points = []
        for load in loads:
            for mode in ("priority", "fifo"):
                asyncio.run(drive(addresses[mode], CAPACITY * 0.5, 2.0))  # warm up: call times known
                classes = asyncio.run(drive(addresses[mode], CAPACITY * load, args.duration))
                points.append({"load": load, "mode": mode, "classes": classes})
                print(_line(load, mode, classes), flush=True)
    results = {"capacity_per_s": CAPACITY, "profile": PROFILE, "duration_s": args.duration, "points": points}
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.plot)
    return 0


def _line(load: float, mode: str, classes: dict[str, Any]) -> str:
    parts = []
    for cls, c in classes.items():
        p99 = f"{c['p99_ms']:.0f}" if c["p99_ms"] is not None else "-"
        refused = sum(c["refused"].values())
        parts.append(
            f"{cls}: goodput {c['goodput_per_s']:.0f}/{c['offered_per_s']:.0f}/s ({c['goodput_share']:.0%}) "
            f"p99 {p99} ms refused {refused} late {c['late']}"
        )
    return f"{load:g}x {mode:<8} " + " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
