"""How the operator CLIs (`gateway traffic`, `gateway tenants`, `gateway experiment`) reach the admin API."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

import httpx


def add_admin_options(p: Any, admin_group: Any = None) -> None:
    """How to reach the admin API: the same options for every operator CLI. `admin_group`: a mutually exclusive
    group of p's that --admin joins (for a CLI that can also work without a gateway)."""
    (p if admin_group is None else admin_group).add_argument(
        "--admin",
        default=os.environ.get("GATEWAY_ADMIN_URL", "http://127.0.0.1:8003"),
        help="admin API address (default $GATEWAY_ADMIN_URL or http://127.0.0.1:8003)",
    )
    p.add_argument(
        "--token", default=os.environ.get("GATEWAY_ADMIN_TOKEN", ""), help="admin token (default $GATEWAY_ADMIN_TOKEN)"
    )
    p.add_argument(
        "--ca-file",
        default=os.environ.get("GATEWAY_ADMIN_CA_FILE"),
        help="CA bundle that signed an https admin API's certificate (default $GATEWAY_ADMIN_CA_FILE)",
    )
    p.add_argument(
        "--client-cert",
        default=os.environ.get("GATEWAY_ADMIN_CLIENT_CERT"),
        help="client certificate (PEM) for an admin API that requires one (default $GATEWAY_ADMIN_CLIENT_CERT)",
    )
    p.add_argument(
        "--client-key",
        default=os.environ.get("GATEWAY_ADMIN_CLIENT_KEY"),
        help="private key of --client-cert (default $GATEWAY_ADMIN_CLIENT_KEY)",
    )


def admin_client(args: argparse.Namespace, prog: str) -> httpx.Client | None:
    """An HTTP client for the admin API from the shared options; None (after saying why) when it cannot be made."""
    if not args.token:
        print(f"{prog}: no admin token; pass --token or set GATEWAY_ADMIN_TOKEN", file=sys.stderr)
        return None
    headers = {"authorization": f"Bearer {args.token}", "x-operator": os.environ.get("USER", "cli")}
    if bool(args.client_cert) != bool(args.client_key):
        print(f"{prog}: --client-cert and --client-key go together", file=sys.stderr)
        return None
    try:
        tls = ssl.create_default_context(cafile=args.ca_file)
        if args.client_cert:
            tls.load_cert_chain(args.client_cert, args.client_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"{prog}: cannot load the TLS files: {exc}", file=sys.stderr)
        return None
    return httpx.Client(base_url=args.admin, headers=headers, timeout=10, verify=tls)


def call_admin(
    args: argparse.Namespace, prog: str, request: Callable[[httpx.Client], httpx.Response]
) -> tuple[int, Any]:
    """One admin API call: (0, the JSON answer), or (exit status, None) after saying on stderr what went wrong."""
    client = admin_client(args, prog)
    if client is None:
        return 2, None
    try:
        with client as http:
            r = request(http)
    except httpx.HTTPError as exc:
        print(f"{prog}: cannot reach the admin API at {args.admin}: {exc}", file=sys.stderr)
        return 1, None
    body = r.json()
    if r.status_code != 200:
        print(f"{prog}: refused ({r.status_code}): {body.get('error', body)}", file=sys.stderr)
        return 1, None
    return 0, body
