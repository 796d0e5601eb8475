"""Request contents, protocol-neutral: random tensors from model metadata, or recorded requests.

Everything here runs once before the load starts; the payload module turns these calls into
wire bytes so the send loop never builds a request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# BF16 has no numpy dtype: it travels as raw 16-bit words (the upper half of an FP32).
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BF16": "uint16",
}
DATATYPES = frozenset(NUMPY_DTYPES) | {"BYTES"}


@dataclass(frozen=True)
class Tensor:
    """One named input; ``data`` has ``shape`` (BYTES: an object array of ``bytes``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]


@dataclass(frozen=True)
class InferCall:
    """The contents of one inference request."""

    model: str
    version: str
    inputs: tuple[Tensor, ...]


def concrete_shape(shape: Sequence[int], batch_rows: int) -> tuple[int, ...]:
    """Replace variable (-1) dims: the first by ``batch_rows``, any other by 1."""
    return tuple(int(d) if int(d) >= 0 else (batch_rows if i == 0 else 1) for i, d in enumerate(shape))


def random_tensor(name: str, datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Tensor:
    datatype = datatype.upper()
    if datatype == "BYTES":
        words = rng.integers(97, 123, size=(*shape, 8), dtype=np.uint8)
        flat = [bytes(w) for w in words.reshape(-1, 8)]
        data = np.array(flat, dtype=object).reshape(shape)
    elif datatype == "BOOL":
        data = rng.random(shape) < 0.5
    elif datatype == "BF16":
        floats = rng.standard_normal(shape).astype(np.float32)
        data = (floats.view(np.uint32) >> 16).astype(np.uint16)
    elif datatype.startswith("FP"):
        data = rng.standard_normal(shape).astype(NUMPY_DTYPES[datatype])
    elif datatype in NUMPY_DTYPES:
        # Small non-negative integers are valid for every integer type and look like ids.
        data = rng.integers(0, 100, size=shape).astype(NUMPY_DTYPES[datatype])
    else:
        raise ValueError(f"input {name!r}: unsupported datatype {datatype!r}")
    return Tensor(name, datatype, shape, data)


def random_calls(
    metadata: Mapping[str, Any],
    *,
    model: str,
    version: str = "",
    batch_rows: int = 1,
    count: int = 64,
    seed: int | None = None,
) -> list[InferCall]:
    """``count`` distinct random requests shaped by a model's V2 metadata (HTTP JSON form)."""
    specs = metadata.get("inputs") or []
    if not specs:
        raise ValueError(f"model {model!r} metadata lists no inputs")
    rng = np.random.default_rng(seed)
    calls = []
    for _ in range(count):
        tensors = tuple(
            random_tensor(str(s["name"]), str(s["datatype"]), concrete_shape(s.get("shape", []), batch_rows), rng)
            for s in specs
        )
        calls.append(InferCall(model, version, tensors))
    return calls


def tensor_from_json(spec: Mapping[str, Any]) -> Tensor:
    """A tensor from its V2 JSON form; nested or flat ``data`` both accepted."""
    name = str(spec["name"])
    datatype = str(spec["datatype"]).upper()
    shape = tuple(int(d) for d in spec["shape"])
    if datatype == "BYTES":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in _flatten(spec["data"])]
        data = np.array(flat, dtype=object)
    elif datatype in NUMPY_DTYPES:
        data = np.asarray(spec["data"], dtype=NUMPY_DTYPES[datatype]).reshape(-1)
    else:
        raise ValueError(f"input {name!r}: unsupported datatype {datatype!r}")
    if data.size != int(np.prod(shape)):
        raise ValueError(f"input {name!r}: {data.size} values do not fill shape {list(shape)}")
    return Tensor(name, datatype, shape, data.reshape(shape))


def parse_record(record: Mapping[str, Any], *, model: str | None = None, version: str = "") -> InferCall:
    """One replay record; unknown fields are ignored (the request log writes a superset)."""
    request = record.get("request") if isinstance(record.get("request"), Mapping) else record
    assert isinstance(request, Mapping)
    name = record.get("model") or record.get("model_name") or model
    if not name:
        raise ValueError("record names no model and no --model was given")
    rec_version = record.get("model_version") or record.get("version") or version
    inputs = tuple(tensor_from_json(s) for s in request["inputs"])
    if not inputs:
        raise ValueError("record has no inputs")
    return InferCall(str(name), str(rec_version or ""), inputs)


def read_replay(lines: Iterable[str], *, model: str | None = None, version: str = "") -> tuple[list[InferCall], int]:
    """Calls from JSON lines, and how many lines were skipped as unusable.

    With ``model`` set, records for other models are skipped: a request log mixes models.
    """
    calls: list[InferCall] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if model and (record.get("model") or record.get("model_name") or model) != model:
                skipped += 1
                continue
            calls.append(parse_record(record, model=model, version=version))
        except (ValueError, KeyError, TypeError, AttributeError):
            skipped += 1
    return calls, skipped


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        out: list[Any] = []
        for item in value:
            out.extend(_flatten(item))
        return out
    return [value]
