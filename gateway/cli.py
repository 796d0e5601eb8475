"""The `gateway` command: serve the gateway, drive load at an endpoint, read the request log."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__

if TYPE_CHECKING:
    from gateway.drift.settings import DriftSettings

SERVE_EPILOG = """\
examples:
  gateway serve                                   # embedded Ray, example models, ports 8000/8001/8002
  gateway serve --repository ./models --ray-address auto
  GATEWAY_HTTP_PORT=9000 gateway serve --config gateway.yaml

Every setting can also come from a YAML file (--config) or a GATEWAY_<NAME> environment
variable; command-line flags win over both.
"""


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="start the gateway (gRPC, HTTP and metrics) in front of Ray Serve",
        description="Start the gateway: deploy every model version in the repository on "
        "Ray Serve and serve the Open Inference Protocol over gRPC and HTTP.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 8002; 0 picks a free one)")
    p.add_argument("--repository", type=Path, help="model repository root (default ./model_repository)")
    p.add_argument(
        "--no-example-models",
        dest="example_models",
        action="store_const",
        const=False,
        help="do not write the example models into an empty repository",
    )
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting an embedded one")
    p.add_argument("--ray-num-cpus", type=int, help="CPUs for the embedded Ray cluster (default: all)")
    p.add_argument(
        "--ready-file", type=Path, help="write the bound ports and model states as JSON to this file once started"
    )
    p.add_argument("--workers", type=int, help="gateway processes sharing the ports (default 1)")
    p.add_argument("--log-level", help="gateway log level (default WARNING)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # an extra process of --workers N


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="A model serving gateway: the Open Inference Protocol (KServe V2) over gRPC and HTTP "
        "in front of Ray Serve.",
        epilog="Run 'gateway COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    from gateway.drift import cli as drift_cli
    from gateway.request_log import cli as request_log_cli
    from gateway.tenants import cli as tenants_cli
    from gateway.traffic import cli as traffic_cli
    from gateway.traffic import experiment_cli
    from loadtests import cli as loadtest_cli

    lt = sub.add_parser(
        "loadtest",
        help="drive QPS load at any Open Inference Protocol endpoint",
        description=getattr(loadtest_cli, "DESCRIPTION", None),
        epilog=getattr(loadtest_cli, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loadtest_cli.add_arguments(lt)
    request_log_cli.add_parser(sub)
    traffic_cli.add_parser(sub)
    experiment_cli.add_parser(sub)
    tenants_cli.add_parser(sub)
    drift_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "loadtest":
        return loadtest_cli.run(args)
    if args.command == "logs":
        return request_log_cli.run(args)
    if args.command == "traffic":
        return traffic_cli.run(args)
    if args.command == "experiment":
        return experiment_cli.run(args)
    if args.command == "tenants":
        return tenants_cli.run(args)
    if args.command == "drift":
        return drift_cli.run(args, _drift_configured)
    return _serve(args)


def _drift_configured(config: Path | None) -> tuple[DriftSettings, Path, Path]:
    """What `gateway drift` takes from the gateway's settings: drift settings, repository, request log root."""
    from gateway.settings import SettingsError, load_settings

    try:
        gw = load_settings(config)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None
    return gw.drift, Path(gw.repository), Path(gw.request_log.dir)


def _serve(args: argparse.Namespace) -> int:
    from gateway.settings import SettingsError, load_settings

    overrides = {
        k: getattr(args, k)
        for k in (
            "host",
            "http_port",
            "grpc_port",
            "metrics_port",
            "repository",
            "example_models",
            "ray_address",
            "ray_num_cpus",
            "workers",
            "log_level",
        )
    }
    try:
        settings = load_settings(args.config, **overrides)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ray's native failure-signal handler treats SIGTERM as a crash and aborts the process during its
    # shutdown (exit 134); the gateway handles SIGTERM itself, as a graceful drain.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if (
        settings.ray_address
        and "RAY_AUTH_MODE" not in os.environ
        and (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file())
    ):
        # Ray turns token auth on for the process that starts a cluster, but a process joining one by
        # address ignores the token unless told to (read when Ray is imported), and is then refused.
        os.environ["RAY_AUTH_MODE"] = "token"
    if settings.workers > 1 and not args.worker:
        # Must be set before prometheus_client is imported; worker processes inherit it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    import uvloop

    from gateway.app import serve

    try:
        return uvloop.run(serve(settings, args.ready_file, args.worker))
    except OSError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
