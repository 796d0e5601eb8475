"""`gateway traffic`: operators read and change the cluster's traffic split through the admin API."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import Any

import httpx

EPILOG = """\
examples:
  export GATEWAY_ADMIN_TOKEN=...                  # the gateway's admin_token
  gateway traffic show
  gateway traffic set breast_cancer 1=90 2=10 --reason "canary for v2"
  gateway traffic set breast_cancer 2=100 --reason "promote v2"
  gateway traffic history breast_cancer

Weights are whole percents that sum to 100; a change naming an unknown version, or giving
traffic to a version that is not ready, is refused and changes nothing.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("traffic", help="show or change how unpinned requests split between versions",
                       description="Show or change the cluster's traffic table through a gateway's admin API.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--admin", default=os.environ.get("GATEWAY_ADMIN_URL", "http://127.0.0.1:8003"),
                   help="admin API address (default $GATEWAY_ADMIN_URL or http://127.0.0.1:8003)")
    p.add_argument("--token", default=os.environ.get("GATEWAY_ADMIN_TOKEN", ""),
                   help="admin token (default $GATEWAY_ADMIN_TOKEN)")
    p.add_argument("--ca-file", default=os.environ.get("GATEWAY_ADMIN_CA_FILE"),
                   help="CA bundle that signed an https admin API's certificate (default $GATEWAY_ADMIN_CA_FILE)")
    p.add_argument("--client-cert", default=os.environ.get("GATEWAY_ADMIN_CLIENT_CERT"),
                   help="client certificate (PEM) for an admin API that requires one "
                        "(default $GATEWAY_ADMIN_CLIENT_CERT)")
    p.add_argument("--client-key", default=os.environ.get("GATEWAY_ADMIN_CLIENT_KEY"),
                   help="private key of --client-cert (default $GATEWAY_ADMIN_CLIENT_KEY)")
    actions = p.add_subparsers(dest="traffic_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="the current split (every model, or one)")
    show.add_argument("model", nargs="?")
    setp = actions.add_parser("set", help="set a model's split, e.g. 1=90 2=10")
    setp.add_argument("model")
    setp.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
    setp.add_argument("--reason", default="", help="why (kept in the audit history)")
    hist = actions.add_parser("history", help="every change of a model's split: who, when, before, after, why")
    hist.add_argument("model")


def _weights(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        version, sep, percent = item.partition("=")
        if not sep or not percent.strip().isdigit():
            raise SystemExit(f"gateway traffic: {item!r} is not VERSION=PERCENT (for example 2=10)")
        out[version] = int(percent)
    return out


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("gateway traffic: no admin token; pass --token or set GATEWAY_ADMIN_TOKEN", file=sys.stderr)
        return 2
    headers = {"authorization": f"Bearer {args.token}", "x-operator": os.environ.get("USER", "cli")}
    if bool(args.client_cert) != bool(args.client_key):
        print("gateway traffic: --client-cert and --client-key go together", file=sys.stderr)
        return 2
    try:
        tls = ssl.create_default_context(cafile=args.ca_file)
        if args.client_cert:
            tls.load_cert_chain(args.client_cert, args.client_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"gateway traffic: cannot load the TLS files: {exc}", file=sys.stderr)
        return 2
    try:
        with httpx.Client(base_url=args.admin, headers=headers, timeout=10, verify=tls) as http:
            if args.traffic_action == "show":
                r = http.get("/admin/traffic" + (f"/{args.model}" if args.model else ""))
            elif args.traffic_action == "set":
                r = http.put(f"/admin/traffic/{args.model}",
                             json={"weights": _weights(args.weights), "reason": args.reason})
            else:
                r = http.get(f"/admin/traffic/{args.model}/history")
    except httpx.HTTPError as exc:
        print(f"gateway traffic: cannot reach the admin API at {args.admin}: {exc}", file=sys.stderr)
        return 1
    body = r.json()
    if r.status_code != 200:
        print(f"gateway traffic: refused ({r.status_code}): {body.get('error', body)}", file=sys.stderr)
        return 1
    _print(args.traffic_action, body)
    return 0


def _print(action: str, body: Any) -> None:
    if action == "history":
        for e in body:
            print(f"rev {e['revision']:<4} {e['who']:<16} {e['before']} -> {e['after']}  {e['reason']}")
        return
    models = body["models"] if "models" in body else {body["model"]: body["weights"]}
    print(f"revision {body['revision']}")
    for model, weights in models.items():
        split = "  ".join(f"v{v}={w}%" for v, w in (weights or {}).items()) or "(newest ready version)"
        print(f"{model:<20} {split}")
