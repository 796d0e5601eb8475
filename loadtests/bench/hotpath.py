"""The gateway's own per-request Python on the gRPC path, measured without gRPC and without Ray.

Runs the gRPC door's `ModelInfer` handler on already parsed requests for the `echo` signature, N at a
time on uvloop (with --stream: the `ModelStreamInfer` handler on serialized requests, one stream per
--stream-depth requests in flight, each write taking a turn of the event loop as grpc.aio's does),
with the real data plane (validation, routing, batcher, metrics, request log) in front of a stand-in
dispatcher that answers each batch after --model-ms. What it reports is the event loop thread's CPU
time per request (and the whole process's, which adds the request log's writer thread): the part of a
request's cost this project's code decides, apart from grpc.aio's own per-call cost and Ray's. Use it
to compare changes to the hot path; end-to-end figures come from loadtests.bench.

    python -m loadtests.bench.hotpath --requests 60000 --rounds 5
    python -m loadtests.bench.hotpath --requests 60000 --rounds 5 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from contract.manifest import Batching, Manifest, TensorSpecModel
from contract.tensors import Arrays
from gateway._proto import inference_pb2 as pb
from gateway.core import DataPlane
from gateway.doors.grpc import InferenceServicer
from gateway.doors.grpc_stream import StreamInfer
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.request_log import RequestLogSettings, RequestLogWriter
from gateway.settings import BatchingOverride
from gateway.telemetry.metrics import Metrics
from serving.examples import ECHO, ECHO_WIDTH


class _Dispatcher:
    def __init__(self, model_s: float) -> None:
        self.model_s = model_s

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        await asyncio.sleep(self.model_s)
        return {"OUTPUT0": inputs["INPUT0"]}


class _Context:
    """What the handler asks of grpc.aio's ServicerContext: no deadline (the door's default applies)."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


class _StreamContext(_Context):
    """A stream's call: each write frees a slot of the client's window and takes a turn of the loop."""

    def __init__(self, window: asyncio.Semaphore) -> None:
        self.window = window

    async def write(self, reply: bytes) -> None:
        self.window.release()
        await asyncio.sleep(0)


def _version() -> VersionInfo:
    spec = [TensorSpecModel(name="INPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])]
    manifest = Manifest(
        name=ECHO,
        version="1",
        runtime="array",
        inputs=spec,
        outputs=[TensorSpecModel(name="OUTPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])],
        batching=Batching(max_batch_size=512, max_queue_rows=16384),
    )
    info = VersionInfo.from_manifest(manifest, BatchingOverride())
    info.state = "READY"
    return info


async def _round(args: argparse.Namespace, log_dir: Path, profile: cProfile.Profile | None) -> dict[str, float]:
    registry = CollectorRegistry()
    log = None if args.no_log else RequestLogWriter(RequestLogSettings(dir=log_dir), registry).start()
    plane = DataPlane(Catalog([_version()]), _Dispatcher(args.model_ms / 1000.0), Metrics(registry), request_log=log)
    servicer = InferenceServicer(plane, 1 << 20, 30.0)
    context = _Context()
    request = pb.ModelInferRequest(
        model_name=ECHO,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, ECHO_WIDTH])],
        raw_input_contents=[np.ones((1, ECHO_WIDTH), np.float32).tobytes()],
    ).SerializeToString()
    left = 0

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            reply = await servicer.ModelInfer(pb.ModelInferRequest.FromString(request), context)
            reply.SerializeToString()

    stream = StreamInfer(InferenceServicer(plane, 1 << 20, 30.0, "x-routing-key", 65536), 256)

    async def stream_client() -> None:
        window = asyncio.Semaphore(args.stream_depth)

        async def requests() -> Any:
            nonlocal left
            while left > 0:
                await window.acquire()
                left -= 1
                yield request

        await stream.handle(requests(), _StreamContext(window))  # type: ignore[arg-type]

    clients = (
        [stream_client for _ in range(max(args.concurrency // args.stream_depth, 1))]
        if args.stream
        else [client for _ in range(args.concurrency)]
    )
    left = min(args.requests, 5000)  # warm-up: first-call caches, the batcher's task, the writer thread
    await asyncio.gather(*(c() for c in clients))
    left = args.requests
    wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(c() for c in clients))
    if profile is not None:
        profile.disable()
    wall, thread, process = time.perf_counter() - wall, time.thread_time() - thread, time.process_time() - process
    await plane.close()
    if log is not None:
        await log.close()
    n = args.requests
    return {"req_per_s": n / wall, "loop_us": thread / n * 1e6, "process_us": process / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench.hotpath",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=60_000, help="requests per round (default 60000)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    p.add_argument("--model-ms", type=float, default=2.0, help="the stand-in model's time per batch (default 2)")
    p.add_argument("--stream", action="store_true", help="measure the ModelStreamInfer handler instead")
    p.add_argument(
        "--stream-depth", type=int, default=8, help="requests in flight per stream with --stream (default 8)"
    )
    p.add_argument("--no-log", action="store_true", help="run without the request log")
    p.add_argument(
        "--profile",
        type=int,
        metavar="N",
        default=0,
        help="profile the last round with cProfile and print its N costliest functions",
    )
    p.add_argument("--out", type=Path, help="write every round and the medians as JSON here")
    args = p.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds, args.stream_depth) < 1:
        p.error("--requests, --concurrency, --rounds and --stream-depth must be at least 1")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        for r in range(args.rounds):
            profile = cProfile.Profile() if args.profile and r == args.rounds - 1 else None
            result = uvloop.run(_round(args, Path(tmp) / f"log-{r}", profile))
            rounds.append(result)
            print(
                f"round {r + 1}/{args.rounds}: {result['req_per_s']:8.0f} req/s  event loop "
                f"{result['loop_us']:5.1f} us/request  process {result['process_us']:5.1f} us/request",
                flush=True,
            )
            if profile is not None:
                pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(
        f"median ({'ModelStreamInfer' if args.stream else 'ModelInfer'}, "
        f"{'request log off' if args.no_log else 'request log on'}): event loop "
        f"{medians['loop_us']:.1f} us/request, process {medians['process_us']:.1f} us/request"
        + (" (the last round ran under the profiler)" if args.profile else "")
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds, "medians": medians}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
