"""Shadow traffic must not hurt the primary: its open-loop latency with and without shadows, side by side.

Starts a gateway (embedded Ray) serving model `shadowed`: version 1 is the primary (sleeps --primary-ms per
call), version 2 a shadow that sleeps 10x as long, version 3 a shadow that raises on every call. Then, in
alternating rounds, measures the primary at a fixed open-loop rate with no shadow and with both shadows
on, and prints medians, the p99 ratio, and what the shadows did (answered, failed, dropped).

    python -m loadtests.bench.shadow --rate 200 --duration 20s --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from contract.manifest import Manifest, TensorSpecModel
from contract.repository import Repository
from loadtests.bench.sidebyside import load
from loadtests.harness import process, wait_for_file

MODEL = "shadowed"
SLEEPER = """
import time

def predict(inputs):
    time.sleep({seconds})
    return {{"y": inputs["x"] * 2}}
"""
BROKEN = """
def predict(inputs):
    raise RuntimeError("this shadow always fails")
"""
TOKEN = "shadow-bench"


def write_repository(root: Path, primary_ms: float) -> None:
    repo = Repository(root)
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 16])]
    out = [TensorSpecModel(name="y", datatype="FP32", shape=[-1, 16])]
    for version, code in (
        ("1", SLEEPER.format(seconds=primary_ms / 1000)),
        ("2", SLEEPER.format(seconds=10 * primary_ms / 1000)),
        ("3", BROKEN),
    ):
        m = Manifest(name=MODEL, version=version, runtime="python", artifact="model.py", inputs=spec, outputs=out)
        repo.write_version(m, _writer(code))


def _writer(code: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "model.py").write_text(code)

    return write


def shadow_counts(metrics_url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith(("gateway_shadow_requests_total{", "gateway_shadow_dropped_total{")):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench.shadow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop rate of primary requests per second")
    parser.add_argument("--duration", default="20s", help="measured window of each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--primary-ms", type=float, default=2.0, help="the primary's compute time per call")
    parser.add_argument("--out", type=Path, help="write every run's numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        write_repository(work / "repository", args.primary_ms)
        ready, log = work / "ready.json", work / "gateway.log"
        print("starting the gateway (embedded Ray) with the primary and two shadow versions...", flush=True)
        env = {
            "GATEWAY_ADMIN_TOKEN": TOKEN,
            "GATEWAY_ADMIN_PORT": "0",
            "GATEWAY_EXAMPLE_MODELS": "false",
            "GATEWAY_TRAFFIC_FILE": str(work / "traffic.json"),
            "GATEWAY_REQUEST_LOG__DIR": str(work / "log"),
        }
        proc = stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--repository",
                    str(work / "repository"),
                    "--http-port",
                    "0",
                    "--grpc-port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--ready-file",
                    str(ready),
                ],
                log,
                env,
                stop_timeout_s=60,
            )
        )
        info = wait_for_file(ready, proc, log)
        admin = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{info['admin_port']}",
                timeout=30,
                headers={"authorization": f"Bearer {TOKEN}"},
            )
        )
        admin.put(f"/admin/traffic/{MODEL}", json={"weights": {"1": 100}}).raise_for_status()
        target = f"grpc://127.0.0.1:{info['grpc_port']}"
        runs: dict[str, dict[str, list[float]]] = {"no shadow": {}, "two shadows": {}}
        for r in range(args.rounds):
            for name in ["no shadow", "two shadows"] if r % 2 == 0 else ["two shadows", "no shadow"]:
                shadows = {"2": 1.0, "3": 1.0} if name == "two shadows" else {}
                admin.put(f"/admin/traffic/{MODEL}/shadows", json={"shadows": shadows}).raise_for_status()
                time.sleep(1.0)  # let the previous run's shadow calls finish
                before = shadow_counts(info["metrics"])
                rep = load(
                    target,
                    work / f"{name.replace(' ', '_')}-{r}.json",
                    "--rate",
                    f"{args.rate:g}",
                    "--duration",
                    args.duration,
                    "--warmup",
                    "2s",
                    model=MODEL,
                )
                time.sleep(1.0)
                after = shadow_counts(info["metrics"])
                delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0)}
                m = runs[name]
                for key, value in (
                    ("p50_ms", rep["latency_ms"]["p50"]),
                    ("p99_ms", rep["latency_ms"]["p99"]),
                    ("ok_qps", rep["ok_qps"]),
                    ("errors", sum(rep["errors_by_code"].values())),
                    ("shadow_ok", sum(v for k, v in delta.items() if "requests" in k and '"OK"' in k)),
                    ("shadow_failed", sum(v for k, v in delta.items() if "requests" in k and '"OK"' not in k)),
                    ("shadow_dropped_full", sum(v for k, v in delta.items() if '"full"' in k)),
                ):
                    m.setdefault(key, []).append(value)
                print(
                    f"round {r + 1}/{args.rounds} {name:<12} p50 {rep['latency_ms']['p50']:7.2f} ms  p99 "
                    f"{rep['latency_ms']['p99']:7.2f} ms  errors {m['errors'][-1]:.0f}  shadow ok "
                    f"{m['shadow_ok'][-1]:.0f} failed {m['shadow_failed'][-1]:.0f} dropped "
                    f"{m['shadow_dropped_full'][-1]:.0f}",
                    flush=True,
                )
        med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in runs.items()}
        base, shadowed = med["no shadow"], med["two shadows"]
        print(f"\nprimary at {args.rate:g}/s over gRPC, medians of {args.rounds} rounds:")
        print(f"  no shadow:   p50 {base['p50_ms']:.2f} ms, p99 {base['p99_ms']:.2f} ms, errors {base['errors']:.0f}")
        print(
            f"  two shadows: p50 {shadowed['p50_ms']:.2f} ms, p99 {shadowed['p99_ms']:.2f} ms, errors "
            f"{shadowed['errors']:.0f} (slow shadow {10 * args.primary_ms:g} ms/call and a failing one)"
        )
        print(
            f"  p99 ratio (shadows / none): {shadowed['p99_ms'] / max(base['p99_ms'], 1e-9):.2f}x; per run shadow "
            f"calls answered {shadowed['shadow_ok']:.0f}, failed {shadowed['shadow_failed']:.0f}, dropped at the "
            f"in-flight cap {shadowed['shadow_dropped_full']:.0f}"
        )
        if args.out:
            args.out.write_text(json.dumps({"runs": runs, "medians": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
