"""Streaming and shared memory, side by side in one run: what they take off the gRPC path's per-call cost.

Starts the gateway (example models; the ONNX classifier `breast_cancer` is measured) and the bare
grpc.aio server (loadtests/fake_server.py: a constant reply, unary and streaming), then measures in
alternating rounds with the load tool at one concurrency: requests per second, and the server process's
own CPU time per request over a fixed number of requests (steadier than req/s on a shared machine: it is
what one core of the server answers, whatever else runs beside it):

    gateway unary         ModelInfer, one call per request
    gateway streaming     ModelStreamInfer, one stream per 8 requests in flight
    gateway shm unary     ModelInfer with the inputs in a system shared memory region
    gateway shm streaming the two together
    bare unary            the bare grpc.aio server, ModelInfer
    bare streaming        the bare grpc.aio server, ModelStreamInfer (a streaming echo)

    python -m loadtests.bench.streaming --rounds 3 --requests 10000 --out streaming.json

With --baseline DIR (a source tree of the gateway to compare with, e.g. `git archive` of a commit
unpacked), a second gateway runs from that tree, joined to the first one's Ray cluster (the same
replicas answer both), and its unary and streaming points are measured in the same rounds:

    mkdir /tmp/base && git archive HEAD~1 | tar -x -C /tmp/base
    python -m loadtests.bench.streaming --rounds 3 --requests 10000 --baseline /tmp/base --no-shm
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loadtests.bench.sidebyside import load
from loadtests.harness import free_port, process, wait_for_file

MODEL = "breast_cancer"
BASELINE_POINTS = (
    ("baseline unary", "base", ()),
    ("baseline streaming", "base", ("--streaming",)),
)
POINTS = (
    ("gateway unary", "gw", ()),
    ("gateway streaming", "gw", ("--streaming",)),
    ("gateway shm unary", "gw", ("--shared-memory",)),
    ("gateway shm streaming", "gw", ("--streaming", "--shared-memory")),
    ("bare unary", "bare", ()),
    ("bare streaming", "bare", ("--streaming",)),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(stack: ExitStack, work: Path, baseline: Path | None) -> dict[str, tuple[str, int]]:
    ready, log = work / "ready.json", work / "gateway.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(work / "repository")]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready)]
    env = {"RAY_USAGE_STATS_ENABLED": "0", "GATEWAY_REQUEST_LOG__DIR": str(work / "request_log")}
    gw = stack.enter_context(process(cmd, log, env, stop_timeout_s=60))
    bare_port = free_port()
    bare_cmd = [sys.executable, "-m", "loadtests.fake_server", "--grpc-port", str(bare_port)]
    bare_cmd += ["--http-port", str(free_port()), "--model", MODEL]
    bare = stack.enter_context(process(bare_cmd, work / "bare.log"))
    info = wait_for_file(ready, gw, log, 300)
    servers = {
        "gw": (f"grpc://127.0.0.1:{info['grpc_port']}", gw.pid),
        "bare": (f"grpc://127.0.0.1:{bare_port}", bare.pid),
    }
    if baseline is not None:
        # -P: the baseline tree on PYTHONPATH comes first, not this checkout (the current directory).
        base_ready, base_log = work / "base-ready.json", work / "baseline.log"
        base_cmd = [sys.executable, "-P", *cmd[1:-1], str(base_ready)]
        base_env = {**env, "PYTHONPATH": str(baseline.resolve()), "GATEWAY_RAY_ADDRESS": info["ray_address"]}
        base_env["GATEWAY_REQUEST_LOG__DIR"] = str(work / "base_request_log")
        base = stack.enter_context(process(base_cmd, base_log, base_env, stop_timeout_s=60))
        base_info = wait_for_file(base_ready, base, base_log, 300)
        servers["base"] = (f"grpc://127.0.0.1:{base_info['grpc_port']}", base.pid)
    return servers


def measure(
    servers: dict[str, tuple[str, int]],
    points: tuple[tuple[str, str, tuple[str, ...]], ...],
    rounds: int,
    requests: int,
    concurrency: int,
    work: Path,
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {name: {"qps": [], "cpu_us": []} for name, _, _ in points}
    for r in range(rounds):
        order = points[r % len(points) :] + points[: r % len(points)]  # alternate who goes first
        for name, server, extra in order:
            url, pid = servers[server]
            tag = f"{name.replace(' ', '_')}-{r}"
            common = ["--concurrency", str(concurrency), *extra]
            load(url, work / f"{tag}-warm.json", *common, "--duration", "1s", model=MODEL)
            before = cpu_seconds(pid)
            report = load(
                url, work / f"{tag}.json", *common, "--max-requests", str(requests), "--duration", "300s", model=MODEL
            )
            cpu_us = (cpu_seconds(pid) - before) * 1e6 / max(report["ok"], 1)
            errors = sum(report["errors_by_code"].values())
            results[name]["qps"].append(report["ok_qps"])
            results[name]["cpu_us"].append(cpu_us)
            print(
                f"round {r + 1}/{rounds} {name:<22} {report['ok_qps']:8.0f} req/s  server CPU {cpu_us:6.0f} us/req  "
                f"p50 {report['latency_ms']['p50']:6.2f} ms  errors {errors}",
                flush=True,
            )
    return results


def table(results: dict[str, dict[str, list[float]]]) -> tuple[str, dict[str, dict[str, float]]]:
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    unary, bare = med["gateway unary"], med["bare streaming"]
    lines = [
        f"{'point':<24} {'req/s':>8} {'x gw unary':>11} {'x bare str.':>12} {'CPU us/req':>11} "
        f"{'capacity x gw unary':>20} {'x bare str.':>12}"
    ]
    for name, m in med.items():
        lines.append(
            f"{name:<24} {m['qps']:8.0f} {m['qps'] / unary['qps']:11.2f} {m['qps'] / bare['qps']:12.2f} "
            f"{m['cpu_us']:11.0f} {unary['cpu_us'] / m['cpu_us']:20.2f} {bare['cpu_us'] / m['cpu_us']:12.2f}"
        )
    return "\n".join(lines), med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.streaming", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--requests", type=int, default=10000, help="measured requests per point and round (default: 10000)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: 64)")
    parser.add_argument("--baseline", type=Path, help="also measure a gateway run from this source tree (see above)")
    parser.add_argument("--no-shm", action="store_true", help="leave out the shared-memory points")
    parser.add_argument("--out", type=Path, help="write every round's figures and the medians here (JSON)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        points = tuple(p for p in POINTS if not (args.no_shm and "--shared-memory" in p[2]))
        if args.baseline is not None:
            if not (args.baseline / "gateway" / "cli.py").is_file():
                parser.error(
                    f"--baseline {args.baseline}: no gateway/cli.py there; unpack a source tree of the gateway"
                )
            points = BASELINE_POINTS + points
        servers = start(stack, work, args.baseline)
        results = measure(servers, points, args.rounds, args.requests, args.concurrency, work)
    text, med = table(results)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps({"rounds": results, "median": med, "concurrency": args.concurrency}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
