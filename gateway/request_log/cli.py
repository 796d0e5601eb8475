"""`gateway logs ...`: tail, query and compact the request log. Mounted by gateway/cli.py.

Imports only the standard library at module level, so `gateway --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_DIR = os.environ.get("GATEWAY_REQUEST_LOG__DIR", "request_log")

DESCRIPTION = "Read the request log: follow new records, query it with SQL, compact closed segments to Parquet."
EPILOG = """\
examples:
  gateway logs tail                                # the last 10 records, one line each
  gateway logs tail -f --model breast_cancer       # follow new records of one model
  gateway logs tail -f --json --checkpoint ship.ckpt | my-shipper   # resumable export
  gateway logs query "SELECT version, count(*), avg(total_ms) FROM requests GROUP BY 1 ORDER BY 1"
  gateway logs query "SELECT code, count(*) FROM requests WHERE ts > now() - INTERVAL 1 HOUR GROUP BY 1"
  gateway logs compact                             # closed .jsonl segments -> .parquet

The log root defaults to $GATEWAY_REQUEST_LOG__DIR or ./request_log (the request_log.dir setting).
The record format is documented in docs/REQUEST_LOG.md.
"""
_TAIL_EPILOG = """\
Without --checkpoint, prints the last -n records, then (with -f) every new one. With --checkpoint FILE,
prints every record not yet consumed according to FILE and saves the new positions after printing, so
that a restarted `tail --checkpoint FILE` neither repeats nor skips a record.
"""
_QUERY_EPILOG = """\
The view `requests` has one row per record: format_version, gateway_id, request_id, time (unix s),
ts (timestamp), model, version, role, routing_reason, code, error, queue_ms, model_ms, total_ms,
batch_rows, client, protocol, trace_id, truncated, inputs and outputs (JSON text), extra.

example:
  gateway logs query "SELECT model, version, quantile_cont(total_ms, 0.99) AS p99 FROM requests GROUP BY ALL"
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Adds `logs` and its subcommands to the `gateway` command's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    logs = sub.add_parser(
        "logs",
        help="tail, query and compact the request log",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=fmt,
    )
    cmds = logs.add_subparsers(dest="logs_command", metavar="SUBCOMMAND")

    def with_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, default=Path(DEFAULT_DIR), help=f"request log root (default {DEFAULT_DIR})")

    tail = cmds.add_parser(
        "tail",
        help="print records, one line each",
        description="Print request log records.",
        epilog=_TAIL_EPILOG,
        formatter_class=fmt,
    )
    with_dir(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until interrupted")
    tail.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="print the last N records first (default 10; 0: only new ones)",
    )
    tail.add_argument("--model", help="only this model's records")
    tail.add_argument("--json", action="store_true", help="print each record as its JSON line")
    tail.add_argument("--checkpoint", type=Path, help="resume from, and save positions to, this file")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between polls with -f (default 0.5)")

    q = cmds.add_parser(
        "query",
        help="run SQL over the view `requests` (DuckDB)",
        description="Run one SQL statement over the request log with DuckDB.",
        epilog=_QUERY_EPILOG,
        formatter_class=fmt,
    )
    q.add_argument("sql", help='for example "SELECT version, avg(total_ms) FROM requests GROUP BY 1"')
    with_dir(q)
    q.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")

    c = cmds.add_parser(
        "compact",
        help="turn closed .jsonl segments into .parquet",
        description="Compact every closed .jsonl segment under the log root to Parquet. "
        "Safe while gateways write and tailers read.",
        formatter_class=fmt,
    )
    with_dir(c)
    c.add_argument("--dry-run", action="store_true", help="only list the segments that would be compacted")
    logs.set_defaults(logs_parser=logs)
    return logs


def run(args: argparse.Namespace) -> int:
    try:
        if args.logs_command == "tail":
            return _tail(args)
        if args.logs_command == "query":
            return _query(args)
        if args.logs_command == "compact":
            return _compact(args)
        args.logs_parser.print_help()
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a traceback
        return 0


def summary(r: dict[str, Any]) -> str:
    """One human-readable line per record."""
    when = datetime.fromtimestamp(float(r.get("time") or 0.0), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    line = (
        f"{when}  {r.get('gateway_id', '')}  {r.get('model', '')}/{r.get('version') or '-'}  "
        f"{r.get('role', '')}  {r.get('code', '')}  {float(r.get('total_ms') or 0.0):.1f} ms "
        f"(queue {float(r.get('queue_ms') or 0.0):.1f}, model {float(r.get('model_ms') or 0.0):.1f})  "
        f"rows {r.get('batch_rows', 0)}  {r.get('protocol', '')} {r.get('client', '')}  "
        f"id {r.get('request_id', '')}"
    )
    if r.get("error"):
        line += f"  error: {r['error']}"
    if r.get("truncated"):
        line += "  [truncated]"
    return line


def _tail(args: argparse.Namespace) -> int:
    import orjson

    from gateway.request_log.tailer import Tailer

    tailer = Tailer(args.dir, args.checkpoint)

    def show(records: list[dict[str, Any]]) -> None:
        for r in records:
            if args.model is None or r.get("model") == args.model:
                print(orjson.dumps(r).decode() if args.json else summary(r))
        sys.stdout.flush()
        tailer.commit()  # after printing: a crash in between repeats records rather than losing them

    first = tailer.poll()
    if args.checkpoint is None:
        if args.model is not None:
            first = [r for r in first if r.get("model") == args.model]
        first = first[-args.lines :] if args.lines > 0 else []
    show(first)
    while args.follow:
        time.sleep(args.interval)
        show(tailer.poll())
    return 0


def _query(args: argparse.Namespace) -> int:
    from contract.extras import MissingExtra, require
    from gateway.request_log.query import PURPOSE, query

    try:
        duckdb = require("duckdb", "query", PURPOSE)
    except MissingExtra as exc:
        print(exc, file=sys.stderr)  # it names the command already
        return 2
    try:
        columns, rows = query(args.dir, args.sql)
    except duckdb.Error as exc:
        print(f"gateway logs query: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
        return 0
    print(format_table(columns, rows))
    return 0


def format_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "NULL"
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(columns))]

    def fmt(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    lines = [fmt(columns), "  ".join("-" * w for w in widths), *(fmt(r) for r in cells)]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(line.rstrip() for line in lines)


def _compact(args: argparse.Namespace) -> int:
    from gateway.request_log.compaction import Compacted, compact_closed

    results = compact_closed(args.dir, dry_run=args.dry_run)
    before = after = 0
    for r in results:
        if isinstance(r, Compacted):
            before, after = before + r.jsonl_bytes, after + r.parquet_bytes
            print(f"{r.parquet}  {r.records} records, {r.jsonl_bytes} -> {r.parquet_bytes} bytes")
        else:
            print(f"would compact {r.path}")
    verb = "would compact" if args.dry_run else "compacted"
    print(f"{verb} {len(results)} segment(s)" + (f" ({before} -> {after} bytes)" if after else ""), file=sys.stderr)
    return 0
