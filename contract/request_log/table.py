"""Records as an Arrow table (the Parquet and DuckDB form): scalar columns, tensors as JSON text.

Keys a version-1 record does not define go to the `extra` column as a JSON object, so nothing a
newer writer added is lost by compaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from contract.request_log.format import FIELDS, SCALAR_FIELDS, TENSOR_FIELDS

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

_TYPES = {
    "format_version": "int64",
    "time": "float64",
    "queue_ms": "float64",
    "model_ms": "float64",
    "total_ms": "float64",
    "batch_rows": "int64",
    "truncated": "bool",
}
COLUMNS: tuple[str, ...] = (*SCALAR_FIELDS, *TENSOR_FIELDS, "extra")
_KNOWN = frozenset(FIELDS)


def schema() -> pa.Schema:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

    return pa.schema([(name, pa.type_for_alias(_TYPES.get(name, "string"))) for name in COLUMNS])


def records_to_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for r in records:
        for name in SCALAR_FIELDS:
            columns[name].append(r.get(name))
        for name in TENSOR_FIELDS:
            columns[name].append(orjson.dumps(r.get(name, [])).decode())
        extra = {k: v for k, v in r.items() if k not in _KNOWN}
        columns["extra"].append(orjson.dumps(extra).decode() if extra else None)
    return pa.Table.from_pydict(columns, schema=schema())


def table_to_records(table: pa.Table) -> list[dict[str, Any]]:
    """The inverse of records_to_table: the same dicts a JSON line decodes to."""
    out = []
    for row in table.to_pylist():
        d = {name: row.get(name) for name in SCALAR_FIELDS}
        for name in TENSOR_FIELDS:
            d[name] = orjson.loads(row[name]) if row.get(name) else []
        if row.get("extra"):
            d.update(orjson.loads(row["extra"]))
        out.append(d)
    return out
