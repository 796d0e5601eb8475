"""`gateway tenants`: operators list tenants, add them, rotate their keys and set their limits (admin API)."""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from gateway.admin_client import add_admin_options, call_admin

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
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tenants",
        help="list tenants, add them, rotate their API keys, set their rate limits and quotas",
        description="Manage the gateway's tenants (API keys, rate limits, in-flight quotas) through its admin API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_admin_options(p)
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
        ("--max-inflight", _limit, "N", "requests in flight at once per model and process"),
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


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("requests_per_s", "rows_per_s", "burst_s", "max_inflight", "priority"):
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = int(value) if name == "max_inflight" and value is not None else value
    return out


def _request(http: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    action = args.tenants_action
    if action == "list":
        return http.get("/admin/tenants")
    path = f"/admin/tenants/{args.name}"
    if action == "add":
        return http.post(path, json=_fields(args))
    if action == "rotate":
        return http.post(f"{path}/rotate", json={"keep_old": args.keep_old})
    if action == "set-limits":
        fields = _fields(args)
        if not fields:
            raise SystemExit("gateway tenants set-limits: name at least one limit to change")
        return http.put(f"{path}/limits", json=fields)
    return http.delete(path)


def run(args: argparse.Namespace) -> int:
    status, body = call_admin(args, "gateway tenants", lambda http: _request(http, args))
    if status:
        return status
    if args.tenants_action == "list":
        _table(body["tenants"])
    else:
        _table({body["tenant"]: body} if "keys" in body else {})
        if "key" in body:
            print(f"\nnew API key for {body['tenant']} (shown this once; keep it secret):\n{body['key']}")
        elif args.tenants_action == "remove":
            print(f"removed tenant {body['tenant']}")
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
