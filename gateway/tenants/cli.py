"""`gateway tenants`: operators list tenants, add them, rotate their keys and set their limits, through a running
gateway's admin API or directly in a tenant file (--file), e.g. to build the file a Kubernetes Secret holds.

Both ways run the same operations (gateway.tenants.gate.operate), so they check and answer alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from gateway.admin_client import add_admin_options, call_admin
from gateway.errors import GatewayError
from gateway.tenants.gate import ROUTES, Action, TenantGate, operate
from gateway.tenants.store import load

PROG = "gateway tenants"

EPILOG = """\
examples:
  export GATEWAY_ADMIN_TOKEN=...                  # the gateway's admin_token
  gateway tenants list
  gateway tenants add checkout --requests-per-s 200 --max-inflight 64 --priority critical
  gateway tenants add nightly --rows-per-s 5000 --priority batch
  gateway tenants rotate checkout                 # a new key; the old one stops working at once
  gateway tenants rotate checkout --keep-old      # both work until the next rotate
  gateway tenants set-limits nightly --rows-per-s 10000 --max-inflight none
  gateway tenants remove nightly

A new key is printed once (only its salted hash is kept): hand it to the tenant, who sends it
in the x-api-key header (HTTP) or metadata key (gRPC). Changes reach every gateway process
within tenants.reload_s, without a restart. Limits: 'none' is unlimited.

Without a gateway (--file PATH), the same actions change a local tenant file ('add' creates it).
On Kubernetes the chart mounts the file from a Secret, read-only, so the admin API cannot change
it: build the file here and put it in the Secret.
  gateway tenants --file tenants.json add checkout --requests-per-s 200 --priority critical
  kubectl create secret generic model-gateway-tenants --from-file=tenants.json=tenants.json
  helm upgrade --install gw helm/model-gateway --reuse-values \\
      --set tenants.enabled=true --set tenants.existingSecret=model-gateway-tenants
Later changes: read the Secret back, change the file, replace the Secret. Every gateway pod
follows it without a restart (the kubelet updates the mounted file within a minute or two):
  kubectl get secret model-gateway-tenants -o jsonpath='{.data.tenants\\.json}' | base64 -d > tenants.json
  gateway tenants --file tenants.json rotate checkout
  kubectl create secret generic model-gateway-tenants --from-file=tenants.json=tenants.json \\
      --dry-run=client -o yaml | kubectl apply -f -
The file holds no keys, only their salted hashes, but keep it private (it is written owner-only).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tenants",
        help="list tenants, add them, rotate their API keys, set their rate limits and quotas",
        description="Manage the gateway's tenants (API keys, rate limits, in-flight quotas) through its admin API,\n"
        "or in a tenant file without a gateway (--file), e.g. to build the file of a Kubernetes Secret.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    add_admin_options(p, where)
    where.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="change this tenant file instead of a running gateway's ('add' creates it): build the file offline, "
        "e.g. for the Kubernetes Secret the chart mounts (tenants.existingSecret); not with --admin",
    )
    actions = p.add_subparsers(dest="tenants_action", metavar="ACTION", required=True)
    actions.add_parser("list", help="every tenant's limits and how many keys it has")
    add = actions.add_parser("add", help="a new tenant with a new key (printed once)")
    rotate = actions.add_parser("rotate", help="a new key for a tenant (printed once)")
    rotate.add_argument("--keep-old", action="store_true", help="the old keys keep working (until the next rotate)")
    limits = actions.add_parser("set-limits", help="change a tenant's limits (the ones not given stay)")
    remove = actions.add_parser("remove", help="delete a tenant; its keys stop working")
    for action in (add, rotate, limits, remove):
        action.add_argument("name", help="the tenant's name (letters, digits, '_', '.', '-')")
    options = (
        ("--requests-per-s", _limit, "N", "sustained requests per second"),
        ("--rows-per-s", _limit, "N", "sustained rows per second"),
        ("--burst-s", float, "S", "seconds of its rate a tenant may spend at once (default 1)"),
        ("--max-inflight", _count, "N", "requests in flight at once per model and process"),
        ("--priority", str, "CLASS", "the tenant's default priority class (e.g. critical, default, batch)"),
    )
    for action in (add, limits):
        for flag, kind, metavar, text in options:  # one not given stays out of the namespace: unchanged
            action.add_argument(flag, type=kind, metavar=metavar, help=text, default=argparse.SUPPRESS)


def _limit(text: str) -> float | None:
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a limit must be positive ('none' for unlimited)")
    return value


def _count(text: str) -> int | None:
    """A whole number of requests, or 'none' (unlimited)."""
    value = _limit(text)
    if value is not None and value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'none'")
    return None if value is None else int(value)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    names = ("requests_per_s", "rows_per_s", "burst_s", "max_inflight", "priority")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The action's JSON body, as the admin API takes it."""
    action = args.tenants_action
    if action in ("add", "set-limits"):
        return _fields(args)
    if action == "rotate":
        return {"keep_old": args.keep_old}
    return None


def _request(http: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    method, suffix = ROUTES[args.tenants_action]
    path = "/admin/tenants" if args.tenants_action == "list" else f"/admin/tenants/{args.name}{suffix}"
    return http.request(method, path, json=_body(args))


def _on_file(args: argparse.Namespace) -> tuple[int, Any]:
    """The action on the tenant file --file names: (0, the answer the admin API would give), or (1, None)
    after saying on stderr what went wrong."""
    path: Path = args.file
    action: Action = args.tenants_action
    if action != "add" and not path.exists():
        print(f"{PROG}: no tenant file {path} ('{PROG} --file {path} add NAME' creates one)", file=sys.stderr)
        return 1, None
    try:
        load(path)  # unreadable, or not a tenant file: say so rather than take it for an empty one
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1, None
    body = _body(args)
    raw = b"" if body is None else json.dumps(body).encode()
    try:
        answer = asyncio.run(operate(TenantGate(path), action, getattr(args, "name", ""), raw))
    except GatewayError as exc:
        message = exc.message.replace(f"'{PROG} list'", f"'{PROG} --file {path} list'")  # the hint, for this file
        print(f"{PROG}: refused: {message}", file=sys.stderr)
        return 1, None
    return 0, answer


def run(args: argparse.Namespace) -> int:
    if args.tenants_action == "set-limits" and not _fields(args):
        print(f"{PROG} set-limits: name at least one limit to change", file=sys.stderr)
        return 2
    if args.file is not None:
        status, body = _on_file(args)
    else:
        status, body = call_admin(args, PROG, lambda http: _request(http, args))
    if status:
        return status
    if args.tenants_action == "list":
        _table(body["tenants"])
    elif args.tenants_action == "remove":
        print(f"removed tenant {body['tenant']}")
    else:
        _table({body["tenant"]: body})
        if "key" in body:
            print(f"\nnew API key for {body['tenant']} (shown this once; keep it secret):\n{body['key']}")
    return 0


def _table(tenants: dict[str, Any]) -> None:
    print(f"{'TENANT':<20} {'PRIORITY':<10} {'REQ/S':>8} {'ROWS/S':>8} {'BURST S':>8} {'INFLIGHT':>9} {'KEYS':>5}")
    for name, t in tenants.items():
        print(
            f"{name:<20} {t.get('priority') or '-':<10} {_num(t.get('requests_per_s')):>8} "
            f"{_num(t.get('rows_per_s')):>8} {_num(t.get('burst_s')):>8} {_num(t.get('max_inflight')):>9} "
            f"{t.get('keys', 0):>5}"
        )


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
