"""`gateway experiment`: start, watch, stop and report A/B/N experiments through the admin API.

The experiment runs in the cluster's traffic table (contract/experiments); this is only its operator's view.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.admin_client import add_admin_options, call_admin
from gateway.traffic.cli import _duration, _fraction, _weights

EPILOG = """\
examples:
  export GATEWAY_ADMIN_TOKEN=...                  # the gateway's admin_token
  gateway experiment start breast_cancer 1=50 2=50 --metric accuracy --mde 0.02 --max-samples 20000
  gateway experiment start shop 1=34 2=33 3=33 --metric mean --mde 0.5 --max-duration 7d \\
      --guard-metric accuracy --guard-margin 0.01 --max-p99-ms 50
  gateway experiment status breast_cancer
  gateway experiment report breast_cancer --out reports/     # experiment.json and experiment.png
  gateway experiment stop breast_cancer --reason "campaign over"

The first arm is control unless --control names another. Outcomes are the labels clients post to
POST /v2/models/{model}/feedback, joined to answered requests by request id. The table promotes an arm
that is better with the required confidence and passes its guardrails, stops an arm that is worse or
breaks a guardrail (its traffic goes back to control), and at the end without a result changes nothing.
The statistics stay valid however often they are read (docs/EXPERIMENTS.md). Every decision is in
`gateway traffic history MODEL` with the numbers behind it.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "experiment",
        help="A/B/N experiments judged on real outcomes, that promote or stop arms by themselves",
        description="Start, watch, stop and report experiments through a gateway's admin API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_admin_options(p)
    actions = p.add_subparsers(dest="experiment_action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="split a model's traffic between arms and let outcomes decide")
    start.add_argument("model")
    start.add_argument("arms", nargs="+", metavar="VERSION=PERCENT", help="arms and their share, e.g. 1=50 2=50")
    start.add_argument(
        "--metric",
        required=True,
        choices=["accuracy", "error_rate", "mean", "log_loss"],
        help="the primary metric, computed from the labels posted back",
    )
    start.add_argument("--control", help="the control arm (default: the first one)")
    start.add_argument("--output", help="the output the metric reads (default: found by shape and type)")
    start.add_argument("--lower-is-better", action="store_true", help="for --metric mean: a lower mean is better")
    start.add_argument("--mde", type=float, help="smallest difference worth finding, in the metric's units")
    start.add_argument("--alpha", type=_fraction, default=0.05, help="error level over all arms (default 5%%)")
    start.add_argument("--min-samples", type=int, default=100, help="outcomes per arm before deciding (default 100)")
    start.add_argument("--max-samples", type=int, help="outcomes per arm after which it ends without a result")
    start.add_argument("--max-duration", type=_duration, metavar="DURATION", help="end without a result after this")
    start.add_argument("--max-error-rate", type=_fraction, default=0.05, help="server-error guardrail (default 5%%)")
    start.add_argument("--max-p99-ms", type=float, help="p99 latency guardrail")
    start.add_argument("--guard-metric", choices=["accuracy", "error_rate", "mean", "log_loss"])
    start.add_argument("--guard-margin", type=float, default=0.0, help="how much worse the guard metric may get")
    start.add_argument(
        "--allocation",
        choices=["fixed", "thompson"],
        default="fixed",
        help="fixed: arms keep their shares until a decision (default); thompson: shares move toward the arm "
        "likeliest to be best (accuracy, error_rate)",
    )
    start.add_argument(
        "--min-share", type=int, default=10, help="with thompson: the percent every arm keeps at least (default 10)"
    )
    status = actions.add_parser("status", help="per arm: n, metric and interval, lift vs control, guardrails")
    status.add_argument("model")
    stop = actions.add_parser("stop", help="end the experiment; control takes all traffic back")
    stop.add_argument("model")
    for action in (start, stop):
        action.add_argument("--reason", default="", help="why (kept in the audit history)")
    report = actions.add_parser("report", help="write experiment.json and experiment.png (metric over time)")
    report.add_argument("model")
    report.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default .)")


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "arms": _weights(args.arms, "gateway experiment start"),
        "metric": args.metric,
        "alpha": args.alpha,
        "min_samples": args.min_samples,
        "max_error_rate": args.max_error_rate,
        "guard_margin": args.guard_margin,
        "allocation": args.allocation,
        "min_share": args.min_share,
        "reason": args.reason,
    }
    optional = {
        "control": args.control,
        "output": args.output,
        "mde": args.mde,
        "max_samples": args.max_samples,
        "max_duration_s": args.max_duration,
        "max_p99_ms": args.max_p99_ms,
        "guard_metric": args.guard_metric,
        "higher_is_better": False if args.lower_is_better else None,
    }
    return {**plan, **{k: v for k, v in optional.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    path = f"/admin/experiments/{args.model}"

    def request(http: httpx.Client) -> httpx.Response:
        if args.experiment_action == "start":
            return http.post(path, json=_plan(args))
        if args.experiment_action == "stop":
            return http.post(f"{path}/stop", json={"reason": args.reason})
        return http.get(path)

    status, body = call_admin(args, "gateway experiment", request)
    if status:
        return status
    if args.experiment_action == "report":
        json_path, png_path = write_report(body, args.out)
        print(f"wrote {json_path} and {png_path}")
    else:
        experiment = body.get("experiments", {}).get(args.model) if "experiments" in body else body
        print(render(experiment))
    return 0


def render(e: dict[str, Any] | None) -> str:
    """The status table: one line per arm."""
    if not e:
        return "no experiment"
    p = e["plan"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["started"]))
    lines = [
        f"{e['model']}: {e['state']} since {when}; metric {p['metric']} "
        f"({'higher' if p['higher_is_better'] else 'lower'} is better), alpha {p['alpha']:g}, "
        f"planned {e.get('planned_samples') or '?'} outcomes per arm",
        f"{'ARM':<8} {'ROLE':<10} {'STATE':<10} {'N':>8} {'METRIC':>9} {'INTERVAL':>21} {'LIFT':>9} "
        f"{'LIFT INTERVAL':>21} {'ERRORS':>7} {'P99 MS':>8}  GUARDRAILS",
    ]
    for v, a in e["arms"].items():
        lift = a.get("lift") or {}
        lines.append(
            f"{v:<8} {a['role']:<10} {a['state']:<10} {a['n']:>8} {_f(a['metric']):>9} {_iv(a['interval']):>21} "
            f"{_f(lift.get('estimate')):>9} {_iv(lift.get('interval')):>21} {a['error_rate']:>7.1%} "
            f"{_f(a['p99_ms']):>8}  {a['guardrail']}"
        )
    if e.get("allocation") == "thompson":
        chances = ", ".join(f"{v} {a['p_best']:.2f}" for v, a in e["arms"].items() if "p_best" in a)
        lines.append(f"allocation: thompson, at least {p.get('min_share', 10)}% per arm; P(best) {chances or '-'}")
    if e.get("outcome"):
        lines.append(f"decision: {e['outcome']}")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _iv(iv: list[float | None] | None) -> str:
    return "-" if not iv else f"[{_f(iv[0])}, {_f(iv[1])}]"


def write_report(e: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """experiment.json (everything, the timeline included) and experiment.png: each arm's metric and its
    always-valid interval against the outcomes joined so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "experiment.json", out / "experiment.png"
    json_path.write_bytes(orjson.dumps(e, option=orjson.OPT_INDENT_2))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    start = e["started"]
    for v in e["arms"]:
        points = [(p["t"] - start, *p["arms"][v]) for p in e.get("timeline", []) if v in p["arms"]]
        points = [p for p in points if p[2] is not None]
        if not points:
            continue
        t = [p[0] for p in points]
        line = ax.plot(t, [p[2] for p in points], label=f"v{v} ({e['arms'][v]['state']})")[0]
        low = [p[3] if p[3] is not None else p[2] for p in points]
        high = [p[4] if p[4] is not None else p[2] for p in points]
        ax.fill_between(t, low, high, alpha=0.2, color=line.get_color())
    ax.set_xlabel("seconds since the experiment began")
    ax.set_ylabel(e["plan"]["metric"])
    ax.set_title(f"{e['model']}: {e['state']}", fontsize=11)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.12)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return json_path, png_path
