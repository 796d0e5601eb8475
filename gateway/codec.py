"""Tensor codec shared by both adapters: Open Inference Protocol datatypes <-> NumPy arrays.

Checks element counts against a cap before allocating anything, and uses zero-copy views of
the wire buffer wherever the wire allows (raw gRPC contents, HTTP binary extension).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract import datatypes
from contract.datatypes import DATATYPES, NUMPY_DTYPES
from gateway.errors import Code, GatewayError, invalid

__all__ = [
    "DATATYPES",
    "NUMPY_DTYPES",
    "datatype_of",
    "element_count",
    "from_list",
    "from_raw",
    "numpy_dtype",
    "to_list",
    "to_raw",
]

_LEN = struct.Struct("<I")


def datatype_of(arr: np.ndarray) -> str:
    try:
        return datatypes.datatype_of(arr)
    except datatypes.UnsupportedDtype:
        raise GatewayError(Code.INTERNAL, f"model produced an unsupported dtype {arr.dtype}") from None


def numpy_dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        known = ", ".join(NUMPY_DTYPES)
        raise invalid(f"input '{name}': unsupported datatype '{datatype}' (expected one of {known})") from None


def element_count(name: str, shape: Sequence[int], max_elements: int) -> int:
    count = 1
    span = 1  # the product of the non-zero dimensions: an empty tensor may not declare absurd ones either
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise invalid(f"input '{name}': shape {list(shape)} must hold non-negative integers")
        count *= dim
        span *= dim or 1
    if count > max_elements or span > max_elements:
        raise GatewayError(
            Code.RESOURCE_EXHAUSTED,
            f"input '{name}': shape {list(shape)} "
            + (f"has {count} elements" if count else f"declares dimensions multiplying to {span}")
            + f", over the limit of {max_elements}",
        )
    return count


def from_raw(name: str, datatype: str, shape: Sequence[int], buf: bytes | memoryview, max_elements: int) -> np.ndarray:
    """Decode raw little-endian tensor bytes; the result is a read-only view of `buf` for fixed-size types."""
    dtype = numpy_dtype(name, datatype)
    count = element_count(name, shape, max_elements)
    if datatype == "BYTES":
        return _bytes_elements(name, shape, buf, count)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise invalid(f"input '{name}': {datatype} shape {list(shape)} needs {expected} bytes of data, got {len(buf)}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _bytes_elements(name: str, shape: Sequence[int], buf: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(buf)
    out = np.empty(count, dtype=np.object_)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise invalid(f"input '{name}': BYTES data holds fewer than the {count} elements its shape declares")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise invalid(f"input '{name}': BYTES element {i} claims {size} bytes past the end of the data")
        out[i] = bytes(view[pos : pos + size])
        pos += size
    if pos != len(view):
        raise invalid(f"input '{name}': BYTES data has {len(view) - pos} bytes beyond the {count} declared elements")
    return out.reshape(shape)


def from_list(name: str, datatype: str, shape: Sequence[int], data: Any, max_elements: int) -> np.ndarray:
    """Decode JSON tensor data (flat or nested lists, row-major) into an array of `shape`."""
    dtype = numpy_dtype(name, datatype)
    count = element_count(name, shape, max_elements)
    if not isinstance(data, list):
        raise invalid(f"input '{name}': 'data' must be a list of {count} values")
    if datatype == "BYTES":
        flat = _flatten(name, data, count)
        out = np.empty(len(flat), dtype=np.object_)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                out[i] = item.encode()
            elif isinstance(item, bytes):
                out[i] = item
            else:
                raise invalid(f"input '{name}': BYTES elements must be strings, got {type(item).__name__}")
        arr = out
    else:
        try:
            arr = np.asarray(data)
        except ValueError:
            raise invalid(f"input '{name}': 'data' is a ragged list; it must be flat or a full nested list") from None
        if arr.size > max_elements:
            raise invalid(f"input '{name}': 'data' holds more elements than its shape {list(shape)} declares")
        exact_ints = False
        if dtype.kind in "iu" and arr.dtype.kind in "fO":
            # NumPy promotes [0, 2**64 - 1] to float64 (and huge ints to object): keep exact Python ints.
            exact = np.asarray(data, dtype=np.object_)
            exact_ints = all(type(v) is int for v in exact.ravel())
            if exact_ints:
                arr = exact
        if not exact_ints:
            _check_kind(name, datatype, arr)
        if dtype.kind in "iu" and arr.size:
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise invalid(f"input '{name}': values outside {info.min}..{info.max} do not fit datatype {datatype}")
        arr = arr.astype(dtype, copy=False)
    if arr.size != count:
        raise invalid(f"input '{name}': shape {list(shape)} needs {count} values, 'data' holds {arr.size}")
    return arr.reshape(shape)


def _flatten(name: str, data: list[Any], limit: int) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > limit:
                raise invalid(f"input '{name}': 'data' holds more than the {limit} elements its shape declares")
        else:
            stack.pop()
    return flat


def _check_kind(name: str, datatype: str, arr: np.ndarray) -> None:
    kind = arr.dtype.kind
    if arr.size == 0:
        return
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype.startswith(("INT", "UINT")):
        ok = kind in "iu"
    else:  # FP16/32/64 accept integers too, as JSON writes 1.0 as 1
        ok = kind in "iuf"
    if not ok:
        raise invalid(f"input '{name}': values of type {arr.dtype} do not match datatype {datatype}")


def to_raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in arr.ravel():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=NUMPY_DTYPES[datatype]).tobytes()


def to_list(arr: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()]
    if datatype == "FP16":
        arr = arr.astype(np.float32)
    return arr.ravel().tolist()  # type: ignore[no-any-return]


# gRPC typed contents: which InferTensorContents field carries each datatype (FP16 has none).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
