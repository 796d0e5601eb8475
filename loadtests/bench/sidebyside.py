"""The side-by-side benchmark the performance work is judged by: one command, one machine, one run.

Starts (1) a bare grpc.aio server answering ModelInfer with a constant reply, (2) Ray Serve's own
HTTP proxy in front of the `echo` model deployment, (3) the gateway over gRPC and (4) over HTTP
in front of the same deployment, plus gateways with batching off and with the request log off;
then measures them in alternating rounds with the load tool and prints medians and ratios.

    python -m loadtests.bench --rounds 3 --duration 10s --out bench.json

With --pin, the server being measured (the bare server, Ray Serve's proxy actor or a gateway) runs on
a CPU of its own, and the load tool, Ray, the model replicas and the idle servers on the others, as in
a deployment where the front door has its own cores: each server's own ceiling, with less scheduling
noise (Linux only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.config import parse_duration
from loadtests.harness import free_port, pids_running, pin, process, wait_for_file

MODEL = "echo"


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    pids: tuple[int, ...] = ()  # the server's processes (--pin moves them onto the server CPU while measured)


def load(target: str, out: Path, *extra: str, model: str = MODEL) -> dict[str, Any]:
    """One load-tool run in its own process, so the generator never shares a GIL with anything measured."""
    cmd = [
        sys.executable,
        "-m",
        "loadtests",
        "--target",
        target,
        "--model",
        model,
        "--no-progress",
        "--report",
        str(out),
        *extra,
    ]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    if not out.exists():
        raise SystemExit(f"the load tool wrote no report for {' '.join(cmd)}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def ray_call_p50_ms(calls: int = 300) -> float:
    """One DeploymentHandle call with one row, sequentially, over the transport the gateway uses by default
    (Ray Serve's direct gRPC channel, pickled arrays): the floor under any gateway's p50."""
    import asyncio

    import numpy as np
    from ray import serve

    handle = serve.get_app_handle("bench-ray-proxy").options(
        method_name="infer", _by_reference=False, request_serialization="pickle", response_serialization="pickle"
    )
    x = {"INPUT0": np.ones((1, 16), np.float32)}

    async def run() -> list[float]:
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            await handle.remote(x)
            times.append((time.perf_counter() - t) * 1000)
        return times

    return statistics.median(asyncio.run(run())[calls // 10 :])


def start_ray(work: Path) -> tuple[str, int, Path]:
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    from contract.repository import Repository
    from serving.deployment import build_app
    from serving.examples import write_echo

    repo = work / "repository"
    entry = write_echo(Repository(repo))
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, namespace="gateway")
    port = free_port()
    serve.start(
        proxy_location=ProxyLocation.HeadOnly,
        http_options={"host": "127.0.0.1", "port": port},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    serve.run(build_app(entry, "FPGA"), name="bench-ray-proxy", route_prefix="/")
    address = ray.get_runtime_context().gcs_address
    return address, port, repo


def measure(
    targets: list[Target],
    rounds: int,
    duration: str,
    concurrency: int,
    open_rate: float,
    work: Path,
    batching: list[Target],
    logging_pair: list[Target],
    log_rate: float,
    transport_pair: list[Target],
    focus: Callable[[Target], None] = lambda t: None,
) -> dict[str, dict[str, list[float]]]:
    """focus(t) runs before each target is measured (--pin: t gets the server CPU to itself)."""
    results: dict[str, dict[str, list[float]]] = {
        t.name: {} for t in targets + batching + logging_pair + transport_pair
    }

    def add(name: str, key: str, value: float) -> None:
        results[name].setdefault(key, []).append(value)

    half = f"{parse_duration(duration) / 2:g}s"
    for r in range(rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]  # alternate who goes first
        for t in order:
            focus(t)
            tag = f"{t.name.replace(' ', '_')}-{r}"
            sat = load(
                t.url,
                work / f"{tag}-sat.json",
                "--concurrency",
                str(concurrency),
                "--duration",
                duration,
                "--warmup",
                "1s",
            )
            add(t.name, "qps", sat["ok_qps"])
            add(t.name, "sat_p50_ms", sat["latency_ms"]["p50"])
            add(t.name, "errors", sum(sat["errors_by_code"].values()))
            c1 = load(t.url, work / f"{tag}-c1.json", "--concurrency", "1", "--duration", half, "--warmup", "1s")
            add(t.name, "c1_p50_ms", c1["latency_ms"]["p50"])
            op = load(
                t.url, work / f"{tag}-open.json", "--rate", f"{open_rate:g}", "--duration", duration, "--warmup", "1s"
            )
            add(t.name, "open_p50_ms", op["latency_ms"]["p50"])
            add(t.name, "open_p99_ms", op["latency_ms"]["p99"])
            if t.name.startswith("gateway"):
                half_rate = max(sat["ok_qps"] / 2, 1)
                hr = load(
                    t.url,
                    work / f"{tag}-half.json",
                    "--rate",
                    f"{half_rate:.0f}",
                    "--duration",
                    duration,
                    "--warmup",
                    "1s",
                )
                add(t.name, "half_rate", half_rate)
                add(t.name, "half_p50_ms", hr["latency_ms"]["p50"])
                add(t.name, "half_p99_ms", hr["latency_ms"]["p99"])
            print(
                f"round {r + 1}/{rounds} {t.name:<22} {sat['ok_qps']:8.0f} req/s  c1 p50 "
                f"{c1['latency_ms']['p50']:6.2f} ms  open p99 {op['latency_ms']['p99']:7.2f} ms",
                flush=True,
            )
        for t in batching:
            focus(t)
            rep = load(
                t.url,
                work / f"{t.name.replace(' ', '_')}-{r}-c256.json",
                "--concurrency",
                "256",
                "--duration",
                duration,
                "--warmup",
                "1s",
                "--connections",
                "8",
            )
            add(t.name, "qps", rep["ok_qps"])
            add(t.name, "sat_p50_ms", rep["latency_ms"]["p50"])
            add(t.name, "errors", sum(rep["errors_by_code"].values()))
            print(f"round {r + 1}/{rounds} {t.name:<22} {rep['ok_qps']:8.0f} req/s at concurrency 256", flush=True)
        for t in logging_pair if r % 2 == 0 else logging_pair[::-1]:
            focus(t)
            tag = f"{t.name.replace(' ', '_')}-{r}"
            sat = load(
                t.url,
                work / f"{tag}-sat.json",
                "--concurrency",
                str(concurrency),
                "--duration",
                duration,
                "--warmup",
                "1s",
            )
            op = load(
                t.url, work / f"{tag}-open.json", "--rate", f"{log_rate:g}", "--duration", duration, "--warmup", "1s"
            )
            add(t.name, "qps", sat["ok_qps"])
            add(t.name, "errors", sum(sat["errors_by_code"].values()) + sum(op["errors_by_code"].values()))
            add(t.name, "log_p50_ms", op["latency_ms"]["p50"])
            add(t.name, "log_p99_ms", op["latency_ms"]["p99"])
            print(
                f"round {r + 1}/{rounds} {t.name:<22} {sat['ok_qps']:8.0f} req/s  p99 {op['latency_ms']['p99']:7.2f} "
                f"ms at {log_rate:g}/s",
                flush=True,
            )
        for t in transport_pair if r % 2 == 0 else transport_pair[::-1]:
            focus(t)
            tag = f"{t.name.replace(' ', '_')}-{r}"
            sat = load(
                t.url,
                work / f"{tag}-sat.json",
                "--concurrency",
                str(concurrency),
                "--duration",
                duration,
                "--warmup",
                "1s",
            )
            c1 = load(t.url, work / f"{tag}-c1.json", "--concurrency", "1", "--duration", half, "--warmup", "1s")
            add(t.name, "qps", sat["ok_qps"])
            add(t.name, "errors", sum(sat["errors_by_code"].values()))
            add(t.name, "transport_c1_p50_ms", c1["latency_ms"]["p50"])
            print(
                f"round {r + 1}/{rounds} {t.name:<22} {sat['ok_qps']:8.0f} req/s  c1 p50 "
                f"{c1['latency_ms']['p50']:6.2f} ms",
                flush=True,
            )
    return results


def table(results: dict[str, dict[str, list[float]]], ray_call_ms: float, open_rate: float, log_rate: float) -> str:
    med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in results.items()}
    ray_qps = med["ray serve http proxy"]["qps"]
    echo_qps = med["bare grpc.aio"]["qps"]
    lines = [
        f"{'target':<24}{'QPS (sat.)':>11}{'x ray':>7}{'x bare':>8}{'c=1 p50 ms':>12}"
        f"{f'p99 ms @{open_rate:g}/s':>16}{'errors':>8}"
    ]
    for name, m in med.items():
        if "c1_p50_ms" not in m:
            continue
        lines.append(
            f"{name:<24}{m['qps']:>11.0f}{m['qps'] / ray_qps:>7.1f}{m['qps'] / echo_qps:>8.2f}"
            f"{m['c1_p50_ms']:>12.2f}{m['open_p99_ms']:>16.2f}{m['errors']:>8.0f}"
        )
    lines.append("")
    lines.append(f"one Ray handle call (1 row, sequential) p50: {ray_call_ms:.2f} ms")
    for name in ("gateway grpc", "gateway http"):
        m = med[name]
        lines.append(
            f"{name}: c=1 p50 is {m['c1_p50_ms'] - ray_call_ms:+.2f} ms over one Ray call; open loop at "
            f"{m['half_rate']:.0f}/s (50% of saturation): p50 {m['half_p50_ms']:.2f} ms, p99 "
            f"{m['half_p99_ms']:.2f} ms ({m['half_p99_ms'] / m['half_p50_ms']:.1f}x p50)"
        )
    on, off = med.get("gateway grpc batching"), med.get("gateway grpc no batching")
    if on and off:
        lines.append(
            f"batching on vs off at concurrency 256 (gRPC): {on['qps']:.0f} vs {off['qps']:.0f} req/s "
            f"= {on['qps'] / max(off['qps'], 1e-9):.1f}x (errors {on['errors']:.0f} / {off['errors']:.0f})"
        )
    logged, unlogged = med.get("gateway grpc log on"), med.get("gateway grpc log off")
    if logged and unlogged:
        lines.append(
            f"request log on vs off (gRPC): {logged['qps']:.0f} vs {unlogged['qps']:.0f} req/s = "
            f"{logged['qps'] / max(unlogged['qps'], 1e-9):.2f}x throughput; p99 at {log_rate:g}/s "
            f"{logged['log_p99_ms']:.2f} vs {unlogged['log_p99_ms']:.2f} ms = "
            f"{logged['log_p99_ms'] / max(unlogged['log_p99_ms'], 1e-9):.2f}x"
        )
    grpc_t, actor_t = med.get("gateway grpc transport grpc"), med.get("gateway grpc transport actor")
    if grpc_t and actor_t:
        lines.append(
            f"replica transport gRPC vs Ray actor calls (gateway gRPC door): {grpc_t['qps']:.0f} vs "
            f"{actor_t['qps']:.0f} req/s = {grpc_t['qps'] / max(actor_t['qps'], 1e-9):.2f}x; c=1 p50 "
            f"{grpc_t['transport_c1_p50_ms']:.2f} vs {actor_t['transport_c1_p50_ms']:.2f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--duration", default="10s", help="length of each saturation and open-loop run")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop concurrency for saturation")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=150.0,
        help="fixed open-loop rate every target is measured at (keep it below the slowest one)",
    )
    parser.add_argument(
        "--log-rate", type=float, default=500.0, help="open-loop rate at which request log on and off are compared"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the server being measured on a CPU of its own (the last one), and the load "
        "tool, Ray, the replicas and the idle servers on the others (Linux, 2 or more CPUs)",
    )
    parser.add_argument("--out", type=Path, help="write medians and every run's numbers as JSON here")
    args = parser.parse_args(argv)
    servers: set[int] = set()
    others: set[int] = set()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            parser.error("--pin needs Linux and at least 2 CPUs")
        servers, others = {cpus[-1]}, set(cpus[:-1])
        os.sched_setaffinity(0, others)  # inherited by everything this process starts
        print(
            f"pinned: the server being measured on CPU {cpus[-1]}; the load tool, Ray, the replicas and the "
            f"idle servers on CPU {', '.join(map(str, cpus[:-1]))}",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        print("starting Ray, Ray Serve's HTTP proxy and the echo deployment...", flush=True)
        address, ray_port, repo = start_ray(work)
        echo_grpc, echo_http = free_port(), free_port()
        bare = stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "loadtests.fake_server",
                    "--grpc-port",
                    str(echo_grpc),
                    "--http-port",
                    str(echo_http),
                    "--model",
                    MODEL,
                ],
                work / "echo.log",
            )
        )
        proxy_pids = tuple(pids_running("ray::ProxyActor"))
        gateways = {}
        variants = {
            "on": {},
            "off": {"GATEWAY_BATCHING": '{"*": {"enabled": false}}'},
            "nolog": {"GATEWAY_REQUEST_LOG__ENABLED": "false"},
            "actor": {"GATEWAY_RAY_TRANSPORT": "actor"},
        }
        for name, env in variants.items():
            env = {**env, "GATEWAY_REQUEST_LOG__DIR": str(work / f"request_log-{name}")}
            ready = work / f"gateway-{name}.json"
            log = work / f"gateway-{name}.log"
            proc = stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli",
                        "serve",
                        "--repository",
                        str(repo),
                        "--ray-address",
                        address,
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
                )
            )
            gateways[name] = {**wait_for_file(ready, proc, log), "pid": proc.pid}
        time.sleep(1.0)

        def gateway(name: str, variant: str, scheme: str = "grpc") -> Target:
            info = gateways[variant]
            return Target(name, f"{scheme}://127.0.0.1:{info[f'{scheme}_port']}", (info["pid"],))

        targets = [
            Target("bare grpc.aio", f"grpc://127.0.0.1:{echo_grpc}", (bare.pid,)),
            Target("ray serve http proxy", f"http://127.0.0.1:{ray_port}", proxy_pids),
            gateway("gateway grpc", "on"),
            gateway("gateway http", "on", "http"),
        ]
        batching = [gateway("gateway grpc batching", "on"), gateway("gateway grpc no batching", "off")]
        logging_pair = [gateway("gateway grpc log on", "on"), gateway("gateway grpc log off", "nolog")]
        transport_pair = [
            gateway("gateway grpc transport grpc", "on"),
            gateway("gateway grpc transport actor", "actor"),
        ]
        every = {pid for t in targets + batching + logging_pair + transport_pair for pid in t.pids}

        def focus_on(t: Target) -> None:
            for pid in every - set(t.pids):
                pin(pid, others)  # the idle servers' own background work stays off the measured one's CPU
            for pid in t.pids:
                pin(pid, servers)

        ray_ms = ray_call_p50_ms()
        results = measure(
            targets,
            args.rounds,
            args.duration,
            args.concurrency,
            args.open_rate,
            work,
            batching,
            logging_pair,
            args.log_rate,
            transport_pair,
            focus_on if servers else lambda t: None,
        )
        text = table(results, ray_ms, args.open_rate, args.log_rate)
        print("\n" + text)
        if args.out:
            args.out.write_text(
                json.dumps({"runs": results, "ray_call_p50_ms": ray_ms, "table": text, "pinned": args.pin}, indent=2)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
