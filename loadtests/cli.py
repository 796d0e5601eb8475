"""Command line: ``gateway loadtest ...`` mounts ``add_arguments``/``run``; so does ``-m``."""

from __future__ import annotations

import argparse
import sys

from loadtests.config import LoadConfig, parse_duration, parse_sweep
from loadtests.metadata import MetadataError
from loadtests.processes import WorkerError
from loadtests.report import Report, meets_slo, summary, sweep_summary

DESCRIPTION = """\
Load-test any Open Inference Protocol (KServe V2 / Triton) endpoint over gRPC or HTTP.

Open loop (--rate) sends on a schedule and measures every latency from the intended send
time, so server stalls cannot hide; closed loop (--concurrency) keeps N requests in flight.
Only the --target address is contacted."""

EPILOG = """\
examples:
  # 500 req/s Poisson arrivals for 30 s over gRPC, JSON report and plot
  %(prog)s --target grpc://127.0.0.1:8001 --model iris --rate 500 --duration 30s \\
      --report out.json --plot out.png

  # 64 concurrent clients over HTTP with binary tensors, 8 rows per request
  %(prog)s --target http://127.0.0.1:8000 --model iris --concurrency 64 --http-binary \\
      --batch-rows 8 --duration 1m

  # highest rate whose p99 stays under 50 ms, 20 s per step, two generator processes
  %(prog)s --target grpc://127.0.0.1:8001 --model iris --sweep 100:2000:100 \\
      --slo-p99-ms 50 --duration 20s --warmup 2s --processes 2 --plot sweep.png

  # replay recorded requests (JSON lines: {"model":..., "inputs":[...]})
  %(prog)s --target grpc://127.0.0.1:8001 --input-file requests.jsonl --rate 200

  # mixed priority classes, each with its deadline; goodput (answers within it) per class
  %(prog)s --target grpc://127.0.0.1:8001 --model iris --rate 400 \
      --mix critical=10,default=30,batch=60 --class-deadline critical=500ms,default=1s,batch=4s

  # two tenants: each class sends its own API key (read from a file, so it stays out of ps)
  %(prog)s --target http://127.0.0.1:8000 --model iris --rate 200 \
      --mix critical=1,batch=3 --class-key critical=@gold.key,batch=@bulk.key

exit status: 0 done; 1 setup failed (unreachable target, bad inputs); 2 bad arguments (or --plot
without matplotlib, the plots extra); 3 the --slo-p99-ms objective was not met (or a sweep found no
passing rate)."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _sweep(text: str) -> str:
    try:
        parse_sweep(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_argument_group("target")
    what.add_argument(
        "--target", required=True, help="grpc://HOST:PORT or http://HOST:PORT (the only address contacted)"
    )
    what.add_argument("--model", help="model name (optional with --input-file)")
    what.add_argument("--model-version", default="", help="model version (default: server's)")
    load = parser.add_argument_group("load (pick one of --rate, --concurrency, --sweep)")
    mode = load.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, metavar="QPS", help="open loop: requests per second")
    mode.add_argument("--concurrency", type=int, metavar="N", help="closed loop: N requests always in flight")
    mode.add_argument(
        "--sweep",
        type=_sweep,
        metavar="START:STOP:STEP",
        help="open-loop rate steps, each --warmup + --duration long; reports the "
        "highest rate meeting --slo-p99-ms (stops after 2 misses in a row)",
    )
    load.add_argument(
        "--slo-p99-ms",
        type=float,
        metavar="MS",
        help="p99 objective (required by --sweep; else checked, exit status 3)",
    )
    load.add_argument(
        "--arrival",
        choices=("poisson", "constant"),
        default="poisson",
        help="open-loop spacing of requests (default: poisson)",
    )
    load.add_argument(
        "--duration",
        type=_duration,
        default=30.0,
        metavar="TIME",
        help="measured window, per sweep step: 30s, 2m, 500ms (default: 30s)",
    )
    load.add_argument(
        "--warmup", type=_duration, default=0.0, metavar="TIME", help="unmeasured load before the window (default: 0)"
    )
    load.add_argument("--max-requests", type=int, metavar="N", help="stop after sending N measured requests")
    load.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="generator OS processes; histograms are merged (default: 1)",
    )
    load.add_argument(
        "--max-inflight",
        type=int,
        default=4096,
        metavar="N",
        help="open loop: due requests beyond N in flight are dropped and counted as late (default: 4096)",
    )
    load.add_argument(
        "--connections", type=int, metavar="N", help="HTTP sockets / gRPC channels (default: from the load)"
    )
    load.add_argument(
        "--timeout", type=_duration, default=30.0, metavar="TIME", help="per-request timeout (default: 30s)"
    )
    load.add_argument(
        "--drain-timeout",
        type=_duration,
        default=5.0,
        metavar="TIME",
        help="wait for in-flight requests after the window; the rest count as TIMEOUT errors (default: 5s)",
    )
    mix = parser.add_argument_group("mixed traffic (priority classes, tenants)")
    mix.add_argument(
        "--mix",
        metavar="NAME=WEIGHT,...",
        help="each request draws a class by weight (critical=10,default=30,batch=60) and names it in "
        "--priority-header; the report gives goodput per class",
    )
    mix.add_argument(
        "--class-deadline",
        metavar="NAME=TIME,...",
        help="per-class deadline (critical=500ms,batch=4s): the gRPC call's deadline, over HTTP the "
        "x-timeout-ms header; goodput counts answers within it, timed from the intended send time",
    )
    mix.add_argument(
        "--class-key",
        metavar="NAME=KEY|@FILE,...",
        help="per-class API key sent in --key-header (@FILE reads it from a file); one class per tenant",
    )
    mix.add_argument(
        "--priority-header", default="x-priority", metavar="NAME", help="header naming the class (default: x-priority)"
    )
    mix.add_argument(
        "--key-header", default="x-api-key", metavar="NAME", help="header carrying --class-key (default: x-api-key)"
    )
    data = parser.add_argument_group("requests")
    data.add_argument(
        "--batch-rows",
        type=int,
        default=1,
        metavar="N",
        help="rows per request: replaces a variable first dimension (default: 1)",
    )
    data.add_argument("--input-file", metavar="PATH", help="replay JSON-lines requests instead of random tensors")
    data.add_argument(
        "--http-binary", action="store_true", help="HTTP: use the binary tensor extension (default: JSON tensors)"
    )
    data.add_argument(
        "--pool-size",
        type=int,
        default=64,
        metavar="N",
        help="distinct random requests, built before the run (default: 64)",
    )
    data.add_argument("--seed", type=int, help="seed for inputs and Poisson arrivals")
    data.add_argument(
        "--streaming",
        action="store_true",
        help="gRPC: send on long-lived ModelStreamInfer streams (one per 8 requests in flight) instead of unary calls",
    )
    data.add_argument(
        "--shared-memory",
        action="store_true",
        help="gRPC, same host: put the inputs in a system shared memory region and send only references to it",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="PATH", help="write the JSON report here")
    out.add_argument("--plot", metavar="PATH", help="write a PNG plot here")
    out.add_argument("--no-progress", action="store_true", help="no live progress bar")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        target=args.target,
        model=args.model,
        model_version=args.model_version,
        rate=args.rate,
        arrival=args.arrival,
        concurrency=args.concurrency,
        sweep=args.sweep,
        slo_p99_ms=args.slo_p99_ms,
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_requests=args.max_requests,
        processes=args.processes,
        batch_rows=args.batch_rows,
        input_file=args.input_file,
        http_binary=args.http_binary,
        max_inflight=args.max_inflight,
        connections=args.connections,
        timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout,
        pool_size=args.pool_size,
        seed=args.seed,
        streaming=args.streaming,
        shared_memory=args.shared_memory,
        progress=not args.no_progress,
        report_path=args.report,
        plot_path=args.plot,
        mix=args.mix,
        class_deadlines=args.class_deadline,
        class_keys=args.class_key,
        priority_header=args.priority_header,
        key_header=args.key_header,
    )


def run(args: argparse.Namespace) -> int:
    from loadtests.runner import run_load

    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    if config.plot_path:
        # Checked before the run, not when the plot is drawn after it.
        from contract.extras import MissingExtra, require
        from loadtests.plot import PURPOSE

        try:
            require("matplotlib", "plots", PURPOSE)
        except MissingExtra as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        result = run_load(config)
    except (MetadataError, WorkerError, OSError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Report):
        print(summary(result))
        slo = config.slo_p99_ms
        return 3 if slo is not None and not meets_slo(result, slo) else 0
    print(sweep_summary(result))
    return 0 if result.best_rate is not None else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests")
    add_arguments(parser)
    return run(parser.parse_args(argv))
