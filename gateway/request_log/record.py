"""A RequestRecord as one JSON line of the request log's format (contract/request_log/format.py), and back."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from contract.request_log.format import (
    FIELDS,
    FORMAT_VERSION,
    SCALAR_FIELDS,
    TENSOR_FIELDS,
    FormatVersionError,
    decode_line,
    tensor_from_json,
)
from gateway.types import RequestRecord, Tensor

__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "SCALAR_FIELDS",
    "TENSOR_FIELDS",
    "FormatVersionError",
    "RecordEncoder",
    "decode_line",
    "tensor_from_json",
    "to_request_record",
]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_MAX_ERROR_CHARS = 1024  # the second truncation step shortens a runaway error message


def _default(obj: Any) -> Any:
    # orjson serializes contiguous native numeric arrays itself; anything else lands here.
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _bytes_data(arr: np.ndarray) -> tuple[list[str], bool]:
    """BYTES elements as strings: UTF-8 text when every element decodes, else base64 (returns True)."""
    items = arr.ravel().tolist()
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in items], False
    except UnicodeDecodeError:
        return [base64.b64encode(x if isinstance(x, bytes) else str(x).encode()).decode() for x in items], True


class RecordEncoder:
    """Turns RequestRecords into JSON lines; runs on the writer thread, never on the event loop."""

    def __init__(
        self, gateway_id: str, redact_inputs: Mapping[str, str] | None = None, max_record_bytes: int = 1024 * 1024
    ) -> None:
        self.gateway_id = gateway_id
        self.redact = dict(redact_inputs or {})
        self.max_record_bytes = max_record_bytes

    def _tensor(self, t: Tensor, with_data: bool, redaction: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        if redaction == "mask":
            out["data"] = None
            out["redacted"] = True
        elif not with_data:
            out["data"] = None
        elif t.datatype == "BYTES" or t.data.dtype.kind in "OSU":
            out["data"], b64 = _bytes_data(t.data)
            if b64:
                out["encoding"] = "base64"
        else:
            out["data"] = np.ascontiguousarray(t.data).ravel()
        return out

    def _tensors(self, r: RequestRecord, with_data: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        inputs = []
        for t in r.inputs:
            action = self.redact.get(t.name)
            if action != "drop":
                inputs.append(self._tensor(t, with_data, action))
        return inputs, [self._tensor(t, with_data) for t in r.outputs]

    def _base_dict(self, r: RequestRecord, with_data: bool) -> dict[str, Any]:
        inputs, outputs = self._tensors(r, with_data)
        return {
            "format_version": FORMAT_VERSION,
            "gateway_id": self.gateway_id,
            "request_id": r.request_id,
            "time": r.time,
            "model": r.model,
            "version": r.version,
            "role": r.role,
            "routing_reason": r.routing_reason,
            "code": r.code,
            "error": r.error,
            "queue_ms": r.queue_ms,
            "model_ms": r.model_ms,
            "total_ms": r.total_ms,
            "batch_rows": r.batch_rows,
            "client": r.client,
            "protocol": r.protocol,
            "trace_id": r.trace_id,
            "truncated": False,
            "inputs": inputs,
            "outputs": outputs,
        }

    def to_dict(self, r: RequestRecord, with_data: bool = True) -> dict[str, Any]:
        d = self._base_dict(r, with_data)
        if r.tenant:
            d["tenant"] = r.tenant
        if r.priority:
            d["priority"] = r.priority
        return d

    def encode(self, r: RequestRecord) -> tuple[bytes, bool]:
        """One line, newline included, at most max_record_bytes when it can be; True when truncated."""
        try:
            line = orjson.dumps(self.to_dict(r), default=_default, option=_OPTIONS)
            if len(line) <= self.max_record_bytes:
                return line, False
        except (TypeError, ValueError, orjson.JSONEncodeError):
            pass  # data that does not serialize is dropped like oversized data: the record itself is kept
        # Step 1: keep every tensor's name, datatype and shape, drop the data.
        d = self.to_dict(r, with_data=False)
        d["truncated"] = True
        line = orjson.dumps(d, default=_default, option=_OPTIONS)
        if len(line) > self.max_record_bytes:
            # Step 2 (thousands of tensors, a huge error text): the scalar fields alone.
            d["inputs"], d["outputs"] = [], []
            d["error"] = d["error"][:_MAX_ERROR_CHARS]
            line = orjson.dumps(d, default=_default, option=_OPTIONS)
        return line, True


def to_request_record(d: Mapping[str, Any]) -> RequestRecord:
    """A logged record back as a RequestRecord (format_version, gateway_id and truncated are not part of it)."""
    return RequestRecord(
        request_id=d["request_id"],
        time=d["time"],
        model=d["model"],
        version=d["version"],
        role=d["role"],
        routing_reason=d["routing_reason"],
        inputs=tuple(tensor_from_json(t) for t in d["inputs"]),
        outputs=tuple(tensor_from_json(t) for t in d["outputs"]),
        code=d["code"],
        error=d["error"],
        queue_ms=d["queue_ms"],
        model_ms=d["model_ms"],
        total_ms=d["total_ms"],
        batch_rows=d["batch_rows"],
        client=d["client"],
        protocol=d["protocol"],
        trace_id=d.get("trace_id", ""),
        tenant=d.get("tenant", ""),
        priority=d.get("priority", ""),
    )
