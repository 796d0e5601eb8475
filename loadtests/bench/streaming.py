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

--concurrency takes a list: the same servers are measured at each level in turn, a table for each, then
the two ratios the streaming path is judged by (streaming x gateway unary, streaming x bare streaming) at
every level, in req/s and in capacity; --plot draws them:

    python -m loadtests.bench.streaming --concurrency 64,128,256,512 --no-shm --plot streaming.png

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

from contract.extras import require
from loadtests.bench.sidebyside import load
from loadtests.harness import free_port, process, wait_for_file

MODEL = "breast_cancer"
TARGETS = {"x gateway unary": 2.0, "x bare streaming": 0.5}  # the streaming path's targets (docs/PERFORMANCE.md)
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


def ratio(point: dict[str, float], against: dict[str, float]) -> dict[str, float]:
    """One point against another: req/s, and capacity (the inverse ratio of server CPU per request)."""
    return {"qps": point["qps"] / against["qps"], "capacity": against["cpu_us"] / point["cpu_us"]}


def table(results: dict[str, dict[str, list[float]]]) -> tuple[str, dict[str, dict[str, float]]]:
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    unary, bare = med["gateway unary"], med["bare streaming"]
    lines = [
        f"{'point':<24} {'req/s':>8} {'x gw unary':>11} {'x bare str.':>12} {'CPU us/req':>11} "
        f"{'capacity x gw unary':>20} {'x bare str.':>12}"
    ]
    for name, m in med.items():
        u, b = ratio(m, unary), ratio(m, bare)
        lines.append(
            f"{name:<24} {m['qps']:8.0f} {u['qps']:11.2f} {b['qps']:12.2f} "
            f"{m['cpu_us']:11.0f} {u['capacity']:20.2f} {b['capacity']:12.2f}"
        )
    return "\n".join(lines), med


def ratios(med: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Gateway streaming against gateway unary and against the bare streaming echo; and, for reference, what
    streaming gives the bare server itself over its own unary calls."""
    streaming, bare = med["gateway streaming"], med["bare streaming"]
    return {
        "x gateway unary": ratio(streaming, med["gateway unary"]),
        "x bare streaming": ratio(streaming, bare),
        "bare streaming x bare unary": ratio(bare, med["bare unary"]),
    }


def summary(by_level: dict[int, dict[str, dict[str, float]]]) -> str:
    """One line per concurrency: gateway streaming's two ratios, in req/s and capacity, against the targets, and
    the bare server's own streaming over unary beside them."""
    lines = [
        f"{'in flight':>9} {'x gw unary req/s':>17} {'capacity':>9} {'x bare str. req/s':>18} {'capacity':>9}"
        f" {'bare: str. x unary req/s':>25} {'capacity':>9}",
    ]
    for level, med in sorted(by_level.items()):
        r = ratios(med)
        u, b, own = r["x gateway unary"], r["x bare streaming"], r["bare streaming x bare unary"]
        lines.append(
            f"{level:>9} {u['qps']:17.2f} {u['capacity']:9.2f} {b['qps']:18.2f} {b['capacity']:9.2f}"
            f" {own['qps']:25.2f} {own['capacity']:9.2f}"
        )
    lines.append(f"{'target':>9} {TARGETS['x gateway unary']:17.2f} {'':9} {TARGETS['x bare streaming']:18.2f}")
    return "\n".join(lines)


def plot(by_level: dict[int, dict[str, dict[str, float]]], path: Path) -> None:
    """Left: req/s of every point against requests in flight. Right: the streaming path's two ratios, in req/s
    (solid) and capacity (dashed), with their targets."""
    matplotlib = require("matplotlib", "plots", "python -m loadtests.bench.streaming --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(by_level)
    fig, (qps_ax, ratio_ax) = plt.subplots(1, 2, figsize=(14, 5), width_ratios=(1, 1.25))
    for name in by_level[levels[0]]:
        qps_ax.plot(levels, [by_level[c][name]["qps"] for c in levels], marker="o", label=name)
    qps_ax.set_ylabel("requests per second")
    qps_ax.set_title(f"{MODEL}: throughput by requests in flight", fontsize=10)
    for (label, target), color in zip(TARGETS.items(), ("tab:blue", "tab:orange"), strict=True):
        values = [ratios(by_level[c])[label] for c in levels]
        ratio_ax.plot(levels, [v["qps"] for v in values], marker="o", color=color, label=f"{label} (req/s)")
        ratio_ax.plot(
            levels,
            [v["capacity"] for v in values],
            marker="s",
            linestyle="--",
            color=color,
            label=f"{label} (capacity)",
        )
        ratio_ax.axhline(target, linestyle=":", color=color, label=f"target {target:g}")
    own = [ratios(by_level[c])["bare streaming x bare unary"] for c in levels]
    ratio_ax.plot(levels, [v["qps"] for v in own], marker="o", color="gray", label="bare: streaming x unary (req/s)")
    ratio_ax.plot(
        levels,
        [v["capacity"] for v in own],
        marker="s",
        linestyle="--",
        color="gray",
        label="bare: streaming x unary (capacity)",
    )
    ratio_ax.set_ylabel("gateway streaming, ratio")
    ratio_ax.set_title("gateway streaming against gateway unary and the bare streaming echo", fontsize=10)
    for ax in (qps_ax, ratio_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("requests in flight")
        ax.grid(True, alpha=0.3)
    qps_ax.legend(loc="best", fontsize=8)
    ratio_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def concurrency_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give requests in flight as numbers, e.g. 64 or 64,256") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one number of requests in flight, each >= 1")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.streaming", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--requests", type=int, default=10000, help="measured requests per point and round (default: 10000)"
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_levels,
        default=[64],
        help="requests in flight; a comma-separated list measures each level in turn (default: 64)",
    )
    parser.add_argument("--baseline", type=Path, help="also measure a gateway run from this source tree (see above)")
    parser.add_argument("--no-shm", action="store_true", help="leave out the shared-memory points")
    parser.add_argument("--out", type=Path, help="write every round's figures and the medians here (JSON)")
    parser.add_argument("--plot", type=Path, help="draw throughput and the streaming ratios by concurrency (PNG)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        require("matplotlib", "plots", "python -m loadtests.bench.streaming --plot")  # fail before measuring
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    runs: dict[int, dict[str, dict[str, list[float]]]] = {}
    medians: dict[int, dict[str, dict[str, float]]] = {}
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
        for level in args.concurrency:
            print(f"--- {level} requests in flight", flush=True)
            runs[level] = measure(servers, points, args.rounds, args.requests, level, work)
            text, medians[level] = table(runs[level])
            print(text, flush=True)
    if len(medians) > 1:
        print("\ngateway streaming, by requests in flight (capacity: inverse ratio of server CPU per request)")
        print(summary(medians))
    if args.out is not None:
        levels = {str(c): {"rounds": runs[c], "median": medians[c], "ratios": ratios(medians[c])} for c in medians}
        args.out.write_text(json.dumps({"concurrency": levels, "targets": TARGETS}, indent=2))
    if args.plot is not None:
        plot(medians, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
