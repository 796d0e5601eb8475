"""The request log's record format (docs/REQUEST_LOG.md), read side: the keys of a record and how to decode one.

Format version 1. Readers accept any record whose format_version they know; new optional keys may
appear within a version, so readers keep keys they do not know (see table.py's `extra`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from contract.datatypes import NUMPY_DTYPES
from contract.tensors import Tensor

FORMAT_VERSION = 1
# Every key of a version-1 record, in the order they are written.
SCALAR_FIELDS: tuple[str, ...] = (
    "format_version",
    "gateway_id",
    "request_id",
    "time",
    "model",
    "version",
    "role",
    "routing_reason",
    "code",
    "error",
    "queue_ms",
    "model_ms",
    "total_ms",
    "batch_rows",
    "client",
    "protocol",
    "trace_id",
    "truncated",
)
TENSOR_FIELDS: tuple[str, ...] = ("inputs", "outputs")
# Optional keys added within version 1, written only when they have a value (compaction keeps them in `extra`).
OPTIONAL_FIELDS: tuple[str, ...] = ("tenant", "priority")
FIELDS = SCALAR_FIELDS + TENSOR_FIELDS


class FormatVersionError(Exception):
    """A record of a format version this code does not know: stop rather than misread it."""


def decode_line(line: bytes) -> dict[str, Any]:
    """One complete JSON line as a dict; ValueError for a line that is not a JSON object,
    FormatVersionError for a record of an unknown format version."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("a request log line must hold a JSON object")
    if obj.get("format_version") != FORMAT_VERSION:
        raise FormatVersionError(
            f"request log record of format_version {obj.get('format_version')!r}; this "
            f"gateway reads version {FORMAT_VERSION}: upgrade it to read this log"
        )
    return obj


def tensor_from_json(d: Mapping[str, Any]) -> Tensor:
    """A logged tensor back as a Tensor (data that was not logged comes back as an empty array)."""
    datatype = str(d["datatype"])
    shape = tuple(int(x) for x in d["shape"])
    data = d.get("data")
    if data is None:
        return Tensor(str(d["name"]), datatype, np.empty((0,), dtype=NUMPY_DTYPES.get(datatype, np.float64)))
    if datatype == "BYTES":
        raw = [base64.b64decode(x) for x in data] if d.get("encoding") == "base64" else [x.encode() for x in data]
        arr = np.empty(len(raw), dtype=object)
        arr[:] = raw
    else:
        dtype = NUMPY_DTYPES[datatype]
        if dtype.kind == "f":  # JSON has no NaN or infinity: they were written as null
            data = [np.nan if x is None else x for x in data]
        arr = np.asarray(data, dtype=dtype)
    return Tensor(str(d["name"]), datatype, arr.reshape(shape))
