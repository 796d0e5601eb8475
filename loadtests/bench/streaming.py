"""Streaming and shared memory, side by side in one run: what they take off the gRPC path's per-call cost.

Starts the gateway (example models; the ONNX classifier `breast_cancer` is measured) and the bare
grpc.aio server (loadtests/fake_server.py: a constant reply, unary and streaming), then measures in
alternating rounds with the load tool at one concurrency:

    gateway unary         ModelInfer, one call per request
    gateway streaming     ModelStreamInfer, all requests on one stream per connection
    gateway shm unary     ModelInfer with the inputs in a system shared memory region
    gateway shm streaming the two together
    bare unary            the bare grpc.aio server, ModelInfer
    bare streaming        the bare grpc.aio server, ModelStreamInfer (a streaming echo)

    python -m loadtests.bench.streaming --rounds 3 --duration 5s --out streaming.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loadtests.bench.sidebyside import load
from loadtests.harness import free_port, process, wait_for_file

MODEL = "breast_cancer"
POINTS = (
    ("gateway unary", "gw", ()),
    ("gateway streaming", "gw", ("--streaming",)),
    ("gateway shm unary", "gw", ("--shared-memory",)),
    ("gateway shm streaming", "gw", ("--streaming", "--shared-memory")),
    ("bare unary", "bare", ()),
    ("bare streaming", "bare", ("--streaming",)),
)


def start(stack: ExitStack, work: Path) -> dict[str, str]:
    ready, log = work / "ready.json", work / "gateway.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(work / "repository")]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready)]
    env = {"RAY_USAGE_STATS_ENABLED": "0", "GATEWAY_REQUEST_LOG__DIR": str(work / "request_log")}
    gw = stack.enter_context(process(cmd, log, env, stop_timeout_s=60))
    bare_port = free_port()
    bare_cmd = [sys.executable, "-m", "loadtests.fake_server", "--grpc-port", str(bare_port)]
    bare_cmd += ["--http-port", str(free_port()), "--model", MODEL]
    stack.enter_context(process(bare_cmd, work / "bare.log"))
    info = wait_for_file(ready, gw, log, 300)
    return {"gw": f"grpc://127.0.0.1:{info['grpc_port']}", "bare": f"grpc://127.0.0.1:{bare_port}"}


def measure(urls: dict[str, str], rounds: int, duration: str, concurrency: int, work: Path) -> dict[str, list[float]]:
    qps: dict[str, list[float]] = {name: [] for name, _, _ in POINTS}
    for r in range(rounds):
        order = POINTS[r % len(POINTS) :] + POINTS[: r % len(POINTS)]  # alternate who goes first
        for name, server, extra in order:
            report = load(
                urls[server],
                work / f"{name.replace(' ', '_')}-{r}.json",
                "--concurrency",
                str(concurrency),
                "--duration",
                duration,
                "--warmup",
                "1s",
                *extra,
                model=MODEL,
            )
            errors = sum(report["errors_by_code"].values())
            qps[name].append(report["ok_qps"])
            print(
                f"round {r + 1}/{rounds} {name:<22} {report['ok_qps']:8.0f} req/s  p50 "
                f"{report['latency_ms']['p50']:6.2f} ms  errors {errors}",
                flush=True,
            )
    return qps


def table(qps: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    med = {name: statistics.median(v) for name, v in qps.items()}
    unary = med["gateway unary"] or 1.0
    bare = med["bare streaming"] or 1.0
    lines = [f"{'point':<24} {'req/s (median)':>15} {'x gateway unary':>16} {'x bare streaming':>17}"]
    for name, value in med.items():
        lines.append(f"{name:<24} {value:15.0f} {value / unary:16.2f} {value / bare:17.2f}")
    return "\n".join(lines), med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.streaming", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--duration", default="5s", help="measured window per point and round (default: 5s)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: 64)")
    parser.add_argument("--out", type=Path, help="write every round's figures and the medians here (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        urls = start(stack, work)
        qps = measure(urls, args.rounds, args.duration, args.concurrency, work)
    text, med = table(qps)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps({"rounds": qps, "median": med, "concurrency": args.concurrency}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
