"""The Open Inference Protocol's datatypes and their NumPy dtypes: one table for the gateway and the replicas."""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: dict[np.dtype[Any], str] = {v: k for k, v in NUMPY_DTYPES.items()}


class UnsupportedDtype(ValueError):
    """An array whose dtype has no Open Inference Protocol datatype."""


def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype.kind in "USO":
        return "BYTES"
    try:
        return DATATYPES[arr.dtype]
    except KeyError:
        raise UnsupportedDtype(f"unsupported dtype {arr.dtype}") from None
