"""`gateway drift ...`: run the sidecar, see the state of drift per (model, version), print a report.
Mounted by gateway/cli.py; imports only the standard library at module level (`gateway --help` stays fast)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.drift.settings import DriftSettings
    from gateway.drift.sidecar import Sidecar

DESCRIPTION = (
    "Watch live inputs and predictions in the request log for drift from each version's reference "
    "statistics, export the scores, and submit a retraining job to Ray when the policy fires."
)
EPILOG = """\
examples:
  gateway drift run --config gateway.yaml            # the sidecar, with the gateway's settings file
  gateway drift run --once --no-retrain              # read the log to its end, write reports, exit
  gateway drift status                               # per (model, version): last window, breaches, alarms
  gateway drift report breast_cancer --version 2     # the latest report and its PNG

Settings live under `drift:` in the gateway's YAML file (GATEWAY_DRIFT__<NAME> in the environment);
the repository and the request log root are the gateway's own. See docs/DRIFT.md.
"""
_RUN_EPILOG = """\
The sidecar checkpoints its log positions together with its open windows (drift.state_file), so a
restart continues where it stopped without skipping or double counting a row. Stop it with Ctrl-C or
SIGTERM; it saves the checkpoint on the way out.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "drift",
        help="watch the request log for drift; alarms and retraining jobs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=fmt,
    )
    cmds = p.add_subparsers(dest="drift_command", metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", type=Path, help="the gateway's YAML settings file (same as `gateway serve`)")
        q.add_argument("--reports-dir", type=Path, help="drift reports folder (default: drift.reports_dir)")

    run = cmds.add_parser(
        "run",
        help="run the sidecar (tail the log, score windows, alarm, retrain)",
        description="Run the drift sidecar in the foreground.",
        epilog=_RUN_EPILOG,
        formatter_class=fmt,
    )
    common(run)
    run.add_argument("--repository", type=Path, help="model repository root (default: the gateway's repository)")
    run.add_argument("--log-dir", type=Path, help="request log root (default: drift.log_dir or request_log.dir)")
    run.add_argument("--state-file", type=Path, help="checkpoint file (default: drift.state_file)")
    run.add_argument("--metrics-port", type=int, help="Prometheus port (default: drift.metrics_port; 0 picks one)")
    run.add_argument("--jobs-address", help="Ray Jobs API address (default: drift.jobs_address)")
    run.add_argument("--no-retrain", action="store_true", help="record alarms but submit no retraining job")
    run.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    run.add_argument("--once", action="store_true", help="read the log to its end, checkpoint and exit")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # started by `gateway serve`: ends with it

    st = cmds.add_parser(
        "status",
        help="last window, statistics over threshold and alarms per (model, version)",
        description="Show the newest window of every watched (model, version), the statistics "
        "over their thresholds, and the alarms with their retraining jobs.",
        formatter_class=fmt,
    )
    common(st)

    rp = cmds.add_parser(
        "report",
        help="print the latest drift report of a model and the path of its PNG",
        description="Print the newest drift report of a model (each version, or one).",
        formatter_class=fmt,
    )
    rp.add_argument("model")
    rp.add_argument("--version", help="only this version")
    rp.add_argument("--json", action="store_true", help="print the report's JSON")
    rp.add_argument("--top", type=int, default=10, help="features listed, most drifted first (default 10)")
    common(rp)
    p.set_defaults(drift_parser=p)
    return p


# Reads the gateway's settings file: (drift settings, repository, request log root); ValueError when it cannot.
Configured = Callable[[Path | None], "tuple[DriftSettings, Path, Path]"]


def run(args: argparse.Namespace, configured: Configured) -> int:
    if args.drift_command is None:
        args.drift_parser.print_help()
        return 2
    try:
        settings = _settings(args, configured)
    except ValueError as exc:
        print(f"gateway drift: {exc}", file=sys.stderr)
        return 2
    try:
        if args.drift_command == "run":
            return _run(args, *settings)
        if args.drift_command == "status":
            return _status(settings[0])
        return _report(args, settings[0])
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def _settings(args: argparse.Namespace, configured: Configured) -> tuple[DriftSettings, Path, Path]:
    """(drift settings with the command line applied, repository, log root)."""
    from pydantic import ValidationError

    from gateway.drift.settings import DriftSettings

    base, base_repository, base_log = configured(args.config)
    flags = {
        "reports_dir": getattr(args, "reports_dir", None),
        "state_file": getattr(args, "state_file", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "jobs_address": getattr(args, "jobs_address", None),
        "log_dir": getattr(args, "log_dir", None),
    }
    if getattr(args, "no_retrain", False):
        flags["retrain"] = False
    try:
        drift = DriftSettings.model_validate({**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise ValueError(
            "invalid drift settings: "
            + "; ".join(f"drift.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        ) from None
    repository = getattr(args, "repository", None) or base_repository
    return drift, Path(repository), Path(drift.log_dir or base_log)


def _run(args: argparse.Namespace, settings: DriftSettings, repository: Path, log_dir: Path) -> int:
    if args.parent_pid is not None and not _ends_with_parent(args.parent_pid):
        return 0
    # Before the slow part of start-up: a gateway that drains right after (re)starting its sidecar stops it
    # with SIGTERM, and the sidecar still leaves its checkpoint then.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    import logging

    from gateway.drift.jobs import RayJobSubmitter
    from gateway.drift.metrics import DriftMetrics
    from gateway.drift.sidecar import Sidecar

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = DriftMetrics()
    submitter = (
        RayJobSubmitter(settings.jobs_address, settings.retrain_runtime_env, settings.jobs_token)
        if settings.retrain
        else None
    )
    try:
        sidecar = Sidecar(settings, repository, log_dir, submitter, metrics)
    except ValueError as exc:
        print(f"gateway drift: {exc}", file=sys.stderr)
        return 1
    where = "no metrics"
    if not args.no_metrics:
        try:
            port = metrics.serve(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            print(
                f"gateway drift: cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}; "
                "set drift.metrics_port or pass --metrics-port",
                file=sys.stderr,
            )
            return 1
        where = f"metrics http://{settings.metrics_host}:{port}/metrics"
    jobs = f"jobs {settings.jobs_address}" if settings.retrain else "retraining off"
    if not args.quiet:
        print(
            f"drift sidecar: log {log_dir}, repository {repository}, reports {settings.reports_dir}, {where}, {jobs}",
            file=sys.stderr,
            flush=True,
        )
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    start = last = time.monotonic()
    seen = 0

    def progress(s: Sidecar) -> None:
        nonlocal last, seen
        now = time.monotonic()
        if args.quiet or now - last < 5:
            return
        p = s.progress
        rate = (p.records - seen) / (now - last)
        last, seen = now, p.records
        print(
            f"records {p.records} ({rate:,.0f}/s)  windows {p.windows}  alarms {p.alarms}  jobs {p.jobs}",
            file=sys.stderr,
            flush=True,
        )

    sidecar.run(stop, progress, once=args.once)
    p = sidecar.progress
    if not args.quiet:
        took = time.monotonic() - start
        print(
            f"drift sidecar stopped: {p.records} records in {took:.1f} s, {p.windows} windows, {p.alarms} alarms, "
            f"{p.jobs} jobs submitted; skipped {_skips(sidecar.counts)}",
            file=sys.stderr,
        )
    return 0


def _ends_with_parent(parent_pid: int) -> bool:
    """Asks for SIGTERM when the parent dies, even by SIGKILL (Linux), so no sidecar is left behind (it
    checkpoints on SIGTERM). False when the parent is already gone: it died before the request was made."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return os.getppid() == parent_pid


def _skips(counts: dict[str, int]) -> str:
    skipped = {k: v for k, v in counts.items() if k != "used" and v}
    return ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"


def _over(report: dict[str, Any]) -> list[str]:
    out = []
    for f in report.get("features", []):
        for stat in f.get("breached", []):
            v = f["scores"].get(stat)
            out.append(f"{f['feature']} {stat}={v:.3g}" if isinstance(v, float) else f"{f['feature']} {stat}")
    return out


def _status(settings: DriftSettings) -> int:
    from gateway.drift import reports

    root = settings.reports_dir
    latest = reports.all_latest(root)
    alarms = list(reports.read_alarms(root))
    if not latest and not alarms:
        print(f"no drift reports under {root} yet (is `gateway drift run` running with the same settings?)")
        return 0
    print(f"{'MODEL':<20} {'VERSION':<8} {'WINDOW':>7} {'ROWS':>6}  {'VERDICT':<12} {'STREAK':>6}  OVER THRESHOLD")
    for r in latest:
        over = _over(r)
        shown = ", ".join(over[:4]) + (f" (+{len(over) - 4} more)" if len(over) > 4 else "")
        v = r["verdict"]
        print(
            f"{r['model']:<20} {r['version']:<8} {r['window']:>7} {r['rows']:>6}  {v['status']:<12} "
            f"{v['streak']:>6}  {shown or '-'}"
        )
    jobs: dict[str, dict[str, Any]] = {}
    for a in alarms:
        if a.get("event") == "job":
            jobs[a["submission_id"]] = a
    raised = [a for a in alarms if a.get("event") == "alarm"]
    print(f"\nalarms: {len(raised)}" + ("" if raised else " (none)"))
    for a in raised[-20:]:
        job = jobs.get(a["submission_id"])
        state = f"job {job['outcome']}" if job else "no job"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.get("time") or 0))
        print(
            f"  {when}Z  {a['model']} v{a['version']} window {a['window']}  {a['submission_id']}  {state}  "
            f"{a.get('reason', '')}"
        )
    return 0


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def _report(args: argparse.Namespace, settings: DriftSettings) -> int:
    import orjson

    from gateway.drift import reports

    found = reports.latest(settings.reports_dir, args.model, args.version)
    if not found:
        which = f"{args.model} version {args.version}" if args.version else args.model
        print(f"gateway drift report: no report for {which} under {settings.reports_dir}", file=sys.stderr)
        return 1
    for r in found:
        path = reports.report_path(settings.reports_dir, r["model"], r["version"], r["window"])
        if args.json:
            print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
            continue
        v = r["verdict"]
        print(
            f"{r['model']} version {r['version']}  window {r['window']}  {r['rows']} rows "
            f"(reference {r['reference_rows']})"
        )
        print(f"verdict: {v['status']}: {v['reason']}")
        if r.get("alarm"):
            print(f"alarm: retraining job {r['alarm']['submission_id']}")
        stats = ("psi", "ks_stat", "ks_pvalue", "js_distance", "chi2_stat", "chi2_pvalue")
        feats = sorted(r["features"], key=lambda f: -(f["scores"].get("psi") or 0.0))[: args.top]
        print(f"\n{'FEATURE':<28} {'KIND':<11} " + " ".join(f"{s:>11}" for s in stats) + "  BREACHED")
        for f in feats:
            print(
                f"{f['feature'][:28]:<28} {f['kind']:<11} "
                + " ".join(f"{_fmt(f['scores'].get(s)):>11}" for s in stats)
                + f"  {','.join(f['breached']) or '-'}"
            )
        print(f"\nreport {path}")
        print(
            f"plot   {r['plot'] or '(none for this window: windows that do not breach are drawn at most every '}"
            + ("" if r["plot"] else f"{settings.plot_interval_s:g} s)")
        )
        print()
    return 0
