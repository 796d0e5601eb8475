"""`gateway traffic`: operators read and change the cluster's traffic split through the admin API."""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from gateway.admin_client import add_admin_options, call_admin

EPILOG = """\
examples:
  export GATEWAY_ADMIN_TOKEN=...                  # the gateway's admin_token
  gateway traffic show
  gateway traffic set breast_cancer 1=90 2=10 --reason "canary for v2"
  gateway traffic shadow breast_cancer 3 --sample 0.2          # mirror 20% of requests to v3
  gateway traffic shadow breast_cancer --off                   # stop shadowing
  gateway traffic ramp breast_cancer 2 --steps 5,25,50,100 --every 10m --max-error-rate 1% --max-p99-ms 50
  gateway traffic promote breast_cancer 2
  gateway traffic rollback breast_cancer
  gateway traffic history breast_cancer

Weights are whole percents that sum to 100; a change naming an unknown version, or giving
traffic to a version that is not ready, is refused and changes nothing. A ramp steps the
version's share up every --every while its live error rate and p99 stay within the guards;
a breach rolls back to the split the ramp started from, by itself. Every change is audited.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "traffic",
        help="show or change how requests split between versions (canary, shadow, ramp)",
        description="Show or change the cluster's traffic table through a gateway's admin API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_admin_options(p)
    actions = p.add_subparsers(dest="traffic_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="the current split, shadows and ramps (every model, or one)")
    show.add_argument("model", nargs="?")
    setp = actions.add_parser("set", help="set a model's split, e.g. 1=90 2=10 (ends a running ramp)")
    setp.add_argument("model")
    setp.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
    shadow = actions.add_parser(
        "shadow", help="mirror a model's requests to a version whose answers are never returned"
    )
    shadow.add_argument("model")
    shadow.add_argument(
        "versions", nargs="*", metavar="VERSION", help="shadow versions (they replace the current ones)"
    )
    shadow.add_argument(
        "--sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="fraction of requests mirrored, e.g. 0.2 or 20%% (default all)",
    )
    shadow.add_argument("--off", action="store_true", help="stop shadowing the model")
    ramp = actions.add_parser("ramp", help="step a canary's share up on a schedule, guarded by its live errors and p99")
    ramp.add_argument("model")
    ramp.add_argument("version")
    ramp.add_argument("--steps", default="5,25,50,100", help="percent at each step (default 5,25,50,100)")
    ramp.add_argument(
        "--every",
        type=_duration,
        default=600.0,
        metavar="DURATION",
        help="time at each step: 90s, 10m, 1h (default 10m)",
    )
    ramp.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=None,
        metavar="RATE",
        help="roll back when the canary's error rate in a step passes this (1%% or 0.01)",
    )
    ramp.add_argument(
        "--max-p99-ms",
        type=float,
        default=None,
        metavar="MS",
        help="roll back when the canary's p99 latency in a step passes this",
    )
    ramp.add_argument(
        "--min-requests", type=int, default=20, help="canary requests a step needs before it is judged (default 20)"
    )
    promote = actions.add_parser("promote", help="give a version all of the model's traffic (ends a running ramp)")
    promote.add_argument("model")
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", help="end a ramp at its starting split, or undo the last split change")
    rollback.add_argument("model")
    for action in (setp, shadow, ramp, promote, rollback):
        action.add_argument("--reason", default="", help="why (kept in the audit history)")
    hist = actions.add_parser("history", help="every change of a model's traffic: who, when, before, after, why")
    hist.add_argument("model")


def _fraction(text: str) -> float:
    try:
        value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction (0.2) or a percent (20%)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1 (0%% and 100%%)")
    return value


def _duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m or 1h") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


def _weights(items: list[str], command: str = "gateway traffic") -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        version, sep, percent = item.partition("=")
        if not sep or not percent.strip().isdigit():
            raise SystemExit(f"{command}: {item!r} is not VERSION=PERCENT (for example 2=10)")
        out[version] = int(percent)
    return out


def _request(http: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    action, model = args.traffic_action, getattr(args, "model", None)
    path = f"/admin/traffic/{model}"
    if action == "show":
        return http.get("/admin/traffic" + (f"/{model}" if model else ""))
    if action == "set":
        return http.put(path, json={"weights": _weights(args.weights), "reason": args.reason})
    if action == "shadow":
        if args.off == bool(args.versions):
            raise SystemExit("gateway traffic shadow: name the shadow version(s), or --off to stop shadowing")
        return http.put(
            f"{path}/shadows", json={"shadows": {v: args.sample for v in args.versions}, "reason": args.reason}
        )
    if action == "ramp":
        try:
            steps = [int(x) for x in args.steps.split(",")]
        except ValueError:
            raise SystemExit(f"gateway traffic ramp: --steps {args.steps!r} is not a list like 5,25,50,100") from None
        return http.post(
            f"{path}/ramp",
            json={
                "version": args.version,
                "steps": steps,
                "every_s": args.every,
                "max_error_rate": args.max_error_rate,
                "max_p99_ms": args.max_p99_ms,
                "min_requests": args.min_requests,
                "reason": args.reason,
            },
        )
    if action == "promote":
        return http.post(f"{path}/promote", json={"version": args.version, "reason": args.reason})
    if action == "rollback":
        return http.post(f"{path}/rollback", json={"reason": args.reason})
    return http.get(f"{path}/history")


def run(args: argparse.Namespace) -> int:
    status, body = call_admin(args, "gateway traffic", lambda http: _request(http, args))
    if status:
        return status
    _print(args.traffic_action, body, getattr(args, "model", None))
    return 0


def _print(action: str, body: Any, model: str | None) -> None:
    if action == "history":
        for e in body:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            print(
                f"rev {e['revision']:<4} {when}  {e['who']:<16} {_short(e['before'])} -> {_short(e['after'])}  "
                f"{e['reason']}"
            )
        return
    if "models" not in body:  # one model
        body = {
            "revision": body["revision"],
            "models": {body["model"]: body["weights"]},
            "shadows": {body["model"]: body.get("shadows") or {}},
            "ramps": {body["model"]: body["ramp"]} if body.get("ramp") else {},
        }
    elif model is not None:  # a change answers with the whole table: show the model changed
        body = {**body, "models": {model: body["models"].get(model)}}
    print(f"revision {body['revision']}")
    for name, weights in body["models"].items():
        split = "  ".join(f"v{v}={w}%" for v, w in (weights or {}).items()) or "(newest ready version)"
        print(f"{name:<20} {split}")
        shadows = body.get("shadows", {}).get(name) or {}
        if shadows:
            print(f"{'':<20} shadow: " + "  ".join(f"v{v} ({s:.0%} of requests)" for v, s in shadows.items()))
        ramp = body.get("ramps", {}).get(name)
        if ramp:
            live = ramp["live"]
            pinned = live.get("pinned")
            print(
                f"{'':<20} ramp: v{ramp['version']} at {ramp['percent']}% (steps "
                f"{','.join(map(str, ramp['steps']))}, every {ramp['every_s']:g} s); this step: "
                f"{live['requests']} requests, {live['error_rate']:.1%} errors"
                + (
                    f"; pinned to v{ramp['version']}, not counted: {pinned['requests']} requests, "
                    f"{pinned['failures']} failed"
                    if pinned is not None
                    else ""
                )
            )


def _short(value: Any) -> str:
    if isinstance(value, dict) and "shadows" in value:
        return "shadows " + (",".join(f"v{v}:{s:g}" for v, s in value["shadows"].items()) or "none")
    if isinstance(value, dict):
        return " ".join(f"v{v}={w}%" for v, w in value.items())
    return "(none)"
