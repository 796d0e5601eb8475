"""SQL over the request log with DuckDB: a view `requests` over .parquet and .jsonl segments alike.

Compacted segments are read by DuckDB from their files; the (recent, small) .jsonl segments are read
by our reader, so partial last lines and a compaction in mid-query are handled one way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.extras import require
from contract.request_log.reader import read_segment
from contract.request_log.segments import list_segments
from contract.request_log.table import records_to_table

if TYPE_CHECKING:
    import duckdb

_ATTEMPTS = 3  # a .parquet deleted by retention between listing and query: list again
PURPOSE = "gateway logs query"


def connect(root: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the view `requests` (every column of table.py, plus `ts`,
    the receive time as a TIMESTAMP WITH TIME ZONE)."""
    require("duckdb", "query", PURPOSE)  # DuckDB is an extra: say which one when it is missing
    import duckdb  # the typed name of the module require() has loaded

    parquet: list[str] = []
    records: list[dict[str, Any]] = []
    for segs in list_segments(Path(root)).values():
        for seg in segs:
            if seg.kind == "parquet":
                parquet.append(str(seg.path))
            else:
                records.extend(read_segment(seg))
    con = duckdb.connect()
    con.register("_jsonl_segments", records_to_table(records))
    source = "SELECT * FROM _jsonl_segments"
    if parquet:
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in parquet)
        source = f"SELECT * FROM read_parquet([{files}], union_by_name = true) UNION ALL BY NAME {source}"
    con.execute(f"CREATE VIEW requests AS SELECT *, to_timestamp(time) AS ts FROM ({source})")
    return con


def query(root: Path | str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Runs one SQL statement over the view `requests`; returns (column names, rows)."""
    require("duckdb", "query", PURPOSE)
    import duckdb

    for attempt in range(_ATTEMPTS):
        con = connect(root)
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description or ()]
            return columns, cur.fetchall()
        except duckdb.IOException:
            if attempt == _ATTEMPTS - 1:
                raise
        finally:
            con.close()
    raise AssertionError("unreachable")
