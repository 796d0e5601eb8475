"""Memory-growth soak: minutes of mixed load on both doors of a gateway, with a gate on its resident memory.

Valid requests and a share of malformed ones (random bytes over gRPC, broken JSON over HTTP) run at a fixed
concurrency; the gateway's RSS (from /proc) is sampled throughout. After the warm-up the growth must stay
under --max-growth-mb, or the run fails with exit status 1 and says by how much it grew.

    python -m loadtests.bench.soak --start --duration 5m                       # starts its own gateway
    python -m loadtests.bench.soak --pid 1234 --grpc 127.0.0.1:8001 --http http://127.0.0.1:8000 --duration 30m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from gateway import codec
from gateway._proto import inference_pb2 as pb
from loadtests.config import parse_duration
from loadtests.harness import process, wait_for_file

EPILOG = """\
The gate compares the median of the last three samples with the median of the first three samples
after the warm-up. Requests that fail are counted by code; a malformed request answered with a client
error (400 / INVALID_ARGUMENT) is the expected answer, a 5xx or INTERNAL is not and fails the run too.
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"soak: process {pid} has no resident memory figure (has it exited?)")


@dataclass
class Tally:
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)


def model_input(grpc_address: str, model: str) -> tuple[pb.ModelInferRequest, dict[str, Any]]:
    """A valid request for `model` built from its metadata (variable dimensions as 1), for both doors."""
    with grpc.insecure_channel(grpc_address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        md = call(pb.ModelMetadataRequest(name=model), timeout=30)
    req = pb.ModelInferRequest(model_name=model)
    inputs = []
    for t in md.inputs:
        shape = [d if d > 0 else 1 for d in t.shape]
        if t.datatype == "BYTES":
            arr = np.full(shape, b"x", dtype=np.object_)
        else:
            arr = np.ones(shape, dtype=codec.NUMPY_DTYPES[t.datatype])
        req.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
        req.raw_input_contents.append(codec.to_raw(arr, t.datatype))
        inputs.append({"name": t.name, "datatype": t.datatype, "shape": shape, "data": codec.to_list(arr, t.datatype)})
    return req, {"inputs": inputs}


async def worker(
    n: int,
    args: argparse.Namespace,
    tally: Tally,
    stop: asyncio.Event,
    valid_grpc: bytes,
    valid_http: bytes,
    channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
) -> None:
    rng = random.Random(n)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    url = f"{args.http}/v2/models/{args.model}/infer"
    use_grpc = n % 2 == 0
    while not stop.is_set():
        malformed = rng.random() < args.malformed_share
        tally.sent += 1
        if use_grpc:
            raw = rng.randbytes(rng.randint(1, 300)) if malformed else valid_grpc
            try:
                await call(raw, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
        else:
            body = valid_http[: rng.randrange(len(valid_http))] if malformed else valid_http
            try:
                r = await http.post(url, content=body, headers={"content-type": "application/json"})
                code = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                code = type(exc).__name__
        tally.codes[code] += 1


async def soak(args: argparse.Namespace, pid: int) -> int:
    req, body = model_input(args.grpc, args.model)
    valid_grpc, valid_http = req.SerializeToString(), json.dumps(body).encode()
    tally, stop = Tally(), asyncio.Event()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    async with (
        grpc.aio.insecure_channel(args.grpc) as channel,
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=args.concurrency)) as http,
    ):
        tasks = [
            asyncio.create_task(worker(n, args, tally, stop, valid_grpc, valid_http, channel, http))
            for n in range(args.concurrency)
        ]
        last_sent, last_t = 0, started
        while (now := time.monotonic()) - started < args.duration:
            await asyncio.sleep(min(args.sample_every, max(0.0, args.duration - (now - started))))
            now = time.monotonic()
            rss = rss_mb(pid)
            samples.append((now - started, rss))
            warm = [r for t, r in samples if t >= args.warmup]
            base = statistics.median(warm[:3]) if warm else None
            rate = (tally.sent - last_sent) / max(1e-9, now - last_t)
            last_sent, last_t = tally.sent, now
            growth = f"{rss - base:+.1f} MB since warm-up" if base is not None else "warming up"
            print(
                f"t={now - started:6.0f}s  rss={rss:7.1f} MB ({growth})  requests={tally.sent} ({rate:.0f}/s)  "
                f"{dict(tally.codes.most_common(6))}",
                flush=True,
            )
        stop.set()
        await asyncio.gather(*tasks)
    warm = [r for t, r in samples if t >= args.warmup]
    if len(warm) < 6:
        print(
            f"soak: too few samples after the warm-up ({len(warm)}); run longer than --warmup plus 6 x --sample-every",
            file=sys.stderr,
        )
        return 2
    base, end = statistics.median(warm[:3]), statistics.median(warm[-3:])
    times = [t for t, _ in samples if t >= args.warmup]
    slope = float(np.polyfit(times, warm, 1)[0]) * 60 if len(set(times)) > 1 else 0.0
    # 503 / UNAVAILABLE is back-pressure, an answer from the error table; other 5xx would be faults.
    server_errors = {
        c: n
        for c, n in tally.codes.items()
        if c in ("INTERNAL", "UNKNOWN") or (c.startswith("HTTP 5") and c != "HTTP 503")
    }
    report = {
        "duration_s": round(samples[-1][0], 1),
        "requests": tally.sent,
        "codes": dict(tally.codes),
        "rss_mb": {"start": samples[0][1], "after_warmup": base, "end": end, "peak": max(r for _, r in samples)},
        "growth_mb": round(end - base, 1),
        "slope_mb_per_min": round(slope, 2),
        "max_growth_mb": args.max_growth_mb,
        "samples": samples,
    }
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    print(
        f"\nsoak: {tally.sent} requests in {report['duration_s']} s; RSS {base:.1f} MB after warm-up -> "
        f"{end:.1f} MB at the end ({end - base:+.1f} MB, {slope:+.2f} MB/min), peak {report['rss_mb']['peak']:.1f}"
        f" MB; codes {dict(tally.codes)}"
    )
    failed = False
    if end - base > args.max_growth_mb:
        print(
            f"soak: FAILED: resident memory grew {end - base:.1f} MB after the warm-up, over the bound of "
            f"{args.max_growth_mb} MB (--max-growth-mb); a leak or an unbounded queue is likely",
            file=sys.stderr,
        )
        failed = True
    if server_errors:
        print(f"soak: FAILED: server errors {server_errors}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


def start_gateway(stack: ExitStack, workdir: Path) -> tuple[int, str, str]:
    """A gateway of its own (embedded Ray, example models) for the soak; stopped with SIGTERM at the end."""
    ready, log = workdir / "ready.json", workdir / "gateway.log"
    env = {
        "GATEWAY_REQUEST_LOG__DIR": str(workdir / "request_log"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "GATEWAY_TRAFFIC_FILE": str(workdir / "traffic_table.json"),
    }
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(workdir / "repository"),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ray-num-cpus",
        "2",
        "--ready-file",
        str(ready),
    ]
    print(f"starting a gateway (log: {log})...", flush=True)
    proc = stack.enter_context(process(cmd, log, env, stop_timeout_s=60))
    info = wait_for_file(ready, proc, log)
    return proc.pid, f"127.0.0.1:{info['grpc_port']}", f"http://127.0.0.1:{info['http_port']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench.soak",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--start", action="store_true", help="start a gateway of its own (embedded Ray, example models)")
    p.add_argument("--pid", type=int, help="process id of the gateway to watch (without --start)")
    p.add_argument("--grpc", default="127.0.0.1:8001", help="gRPC door host:port (default 127.0.0.1:8001)")
    p.add_argument("--http", default="http://127.0.0.1:8000", help="HTTP door URL (default http://127.0.0.1:8000)")
    p.add_argument("--model", default="echo", help="model to call (default echo)")
    p.add_argument("--duration", type=parse_duration, default=parse_duration("5m"), help="how long (default 5m)")
    p.add_argument(
        "--warmup",
        type=parse_duration,
        default=parse_duration("60s"),
        help="load before the memory baseline is taken (default 60s)",
    )
    p.add_argument(
        "--sample-every",
        type=parse_duration,
        default=parse_duration("10s"),
        help="RSS sampling and progress interval (default 10s)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight, half per door (default 16)")
    p.add_argument("--malformed-share", type=float, default=0.1, help="share of malformed requests (default 0.1)")
    p.add_argument(
        "--max-growth-mb",
        type=float,
        default=50.0,
        help="resident memory growth allowed after the warm-up (default 50)",
    )
    p.add_argument("--report", help="write a JSON report here")
    args = p.parse_args(argv)
    if not args.start and args.pid is None:
        p.error("give --pid of a running gateway, or --start one")
    with ExitStack() as stack:
        pid = args.pid
        if args.start:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            pid, args.grpc, args.http = start_gateway(stack, workdir)
        if not os.path.exists(f"/proc/{pid}"):
            p.error(f"no process {pid}")
        return asyncio.run(soak(args, pid))


if __name__ == "__main__":
    sys.exit(main())
