"""Benchmark of the drift sidecar: records/s processed on one core, and peak memory.

Writes a request log of N records shaped like the example classifier (30 FP32 features in, 2 FP32
probabilities and an INT64 label out) with the gateway's own writer, then runs the sidecar over it in
a fresh process (one thread) and reports its throughput against the target, 10x the gateway's peak
rate (about 3,000 req/s, so 30,000 records/s).

    .venv/bin/python -m loadtests.bench.drift --records 200000 --out drift_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway.codec import NUMPY_DTYPES
from gateway.request_log.settings import RequestLogSettings
from gateway.request_log.writer import RequestLogWriter
from gateway.types import RequestRecord, Tensor

TARGET_RECORDS_S = 30_000
MODEL = "breast_cancer"


def records_from(
    x: np.ndarray,
    p: np.ndarray,
    *,
    model: str = MODEL,
    version: str = "1",
    t0: float = 1.7e9,
    dt: float = 0.001,
    rows_per_request: int = 1,
    role: str = "primary",
    code: str = "OK",
    prefix: str = "r",
) -> list[RequestRecord]:
    """Request records carrying x (rows, 30) and class-1 probabilities p (rows,), rows_per_request each."""
    out = []
    f32 = NUMPY_DTYPES["FP32"]
    for i, start in enumerate(range(0, x.shape[0], rows_per_request)):
        xs = x[start : start + rows_per_request].astype(f32)
        ps = p[start : start + rows_per_request].astype(f32)
        probs = np.stack([1 - ps, ps], axis=1).astype(f32)
        out.append(
            RequestRecord(
                request_id=f"{prefix}{i}",
                time=t0 + i * dt,
                model=model,
                version=version,
                role=role,
                routing_reason="newest ready version",
                inputs=(Tensor("features", "FP32", xs),),
                outputs=(Tensor("probabilities", "FP32", probs), Tensor("label", "INT64", (ps > 0.5).astype(np.int64))),
                code=code,
                error="",
                queue_ms=0.05,
                model_ms=1.5,
                total_ms=2.0,
                batch_rows=8,
                client="127.0.0.1:5000",
                protocol="grpc",
            )
        )
    return out


def write_log(
    root: Path, records: list[RequestRecord], gateway_id: str = "gw", rotate_bytes: int = 8 << 20, chunk: int = 5000
) -> str:
    """Appends the records with the gateway's RequestLogWriter, `chunk` at a time (rotation is checked between
    writes); returns the writer's gateway id."""
    settings = RequestLogSettings(
        dir=root,
        gateway_id=gateway_id,
        durability="async",
        rotate_bytes=rotate_bytes,
        max_queue_records=1_000_000,
        retain_bytes=None,
        retain_s=None,
    )

    async def go() -> str:
        w = RequestLogWriter(settings).start()
        for i in range(0, len(records), chunk):
            await asyncio.gather(*(w.append(r) for r in records[i : i + chunk]))
            await w.flush()
        await w.close()
        return w.gateway_id

    return asyncio.run(go())


def classifier_sample(repository: Path, n: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows resampled from version 1's reference (plus `shift` reference standard deviations), and its
    predictions (shifted rows keep their reference prediction; the benchmark does not need the model)."""
    with np.load(repository / MODEL / "1" / "reference.npz") as z:
        ref_x, ref_p = np.asarray(z["inputs"]), np.asarray(z["predictions"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ref_x.shape[0], n)
    x = ref_x[idx] * (1 + rng.normal(0, 0.01, (n, ref_x.shape[1]))) + shift * ref_x.std(axis=0)
    return x.astype(np.float32), ref_p[idx]


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: on Linux it keeps the peak of the
    parent that forked the process (the log generator, holding every record)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(args: argparse.Namespace) -> None:
    """The measured side, in its own process: the sidecar over the log, one thread."""
    import threading

    from gateway.drift.settings import DriftSettings
    from gateway.drift.sidecar import Sidecar

    t0 = time.perf_counter()
    import matplotlib.pyplot  # noqa: F401 - start-up costs (imports), reported apart from the throughput
    import scipy.stats  # noqa: F401

    startup_s = time.perf_counter() - t0
    work = Path(args.work)
    settings = DriftSettings(
        state_file=work / "state.npz",
        reports_dir=work / "reports",
        window_rows=args.window_rows,
        plot_interval_s=args.plot_interval_s,
        retrain=False,
        commit_interval_s=5.0,
    )
    sidecar = Sidecar(settings, Path(args.repository), work / "log")
    rss0 = _peak_rss_mib()
    start, cpu0 = time.perf_counter(), time.process_time()
    sidecar.run(threading.Event(), once=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    print(
        json.dumps(
            {
                "records": sidecar.progress.records,
                "windows": sidecar.progress.windows,
                "wall_s": wall,
                "import_s": startup_s,
                "cpu_s": cpu,
                "rss_before_mib": rss0,
                "peak_rss_mib": _peak_rss_mib(),
                "counts": sidecar.counts,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench.drift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--records", type=int, default=200_000, help="records in the generated log (default 200000)")
    p.add_argument("--window-rows", type=int, default=1000, help="drift.window_rows (default 1000)")
    p.add_argument("--plot-interval-s", type=float, default=30.0, help="drift.plot_interval_s (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="measured runs over the same log (default 3)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--repository", help=argparse.SUPPRESS)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        _measure(args)
        return 0
    from serving.examples import ensure_examples

    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        print("writing the example models ...", file=sys.stderr)
        ensure_examples(repo)
        half = args.records // 2
        x0, p0 = classifier_sample(repo, half, 0.0, seed=1)
        x1, p1 = classifier_sample(repo, args.records - half, 1.0, seed=2)
        print(f"writing {args.records} records with the request log writer ...", file=sys.stderr)
        recs = records_from(np.concatenate([x0, x1]), np.concatenate([p0, p1]))
        write_log(work / "log", recs)
        size = sum(f.stat().st_size for f in (work / "log").rglob("segment-*"))
        del recs
        runs = []
        for i in range(args.rounds):
            print(f"running the sidecar over it (round {i + 1} of {args.rounds}) ...", file=sys.stderr)
            shutil.rmtree(work / "reports", ignore_errors=True)
            (work / "state.npz").unlink(missing_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "loadtests.bench.drift",
                "--measure",
                "--work",
                str(work),
                "--repository",
                str(repo),
                "--window-rows",
                str(args.window_rows),
                "--plot-interval-s",
                str(args.plot_interval_s),
            ]
            out = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            )
            if out.returncode != 0:
                raise SystemExit(f"the measured sidecar failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rates = sorted(r["records"] / r["wall_s"] for r in runs)
    per_cpu = sorted(r["records"] / r["cpu_s"] for r in runs)
    m = runs[-1]
    rate = statistics.median(rates)
    result = {
        "records": m["records"],
        "windows": m["windows"],
        "window_rows": args.window_rows,
        "log_bytes": size,
        "bytes_per_record": size / max(m["records"], 1),
        "rounds": runs,
        "records_per_s_median": rate,
        "records_per_s_best": rates[-1],
        "records_per_cpu_s_median": statistics.median(per_cpu),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "import_s": m["import_s"],
        "target_records_per_s": TARGET_RECORDS_S,
        "ratio_to_target_median": rate / TARGET_RECORDS_S,
    }
    print(
        f"{m['records']} records ({size / max(m['records'], 1):.0f} bytes each), {m['windows']} windows of "
        f"{args.window_rows} rows, {args.rounds} rounds: median {rate:,.0f} records/s wall (best {rates[-1]:,.0f}), "
        f"median {result['records_per_cpu_s_median']:,.0f} per CPU second; {rate / TARGET_RECORDS_S:.2f}x the "
        f"30,000/s target (best {rates[-1] / TARGET_RECORDS_S:.2f}x); peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"({m['rss_before_mib']:.0f} MiB before reading, imports included)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
