"""Checks a decoded request against the model version's signature before anything is queued."""

from __future__ import annotations

import numpy as np

from gateway.catalog import VersionInfo
from gateway.errors import invalid
from gateway.types import RequestedOutput, Tensor


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def validate_inputs(info: VersionInfo, inputs: tuple[Tensor, ...]) -> tuple[dict[str, np.ndarray], int]:
    """Returns the inputs by name and the batch size (rows along the first dimension)."""
    arrays: dict[str, np.ndarray] = {}
    for t in inputs:
        spec = info.input_index.get(t.name)
        if spec is None:
            raise invalid(f"model '{info.model}' has no input '{t.name}' "
                          f"(inputs: {', '.join(info.input_index)})")
        if t.name in arrays:
            raise invalid(f"input '{t.name}' appears twice")
        if t.datatype != spec.datatype:
            raise invalid(f"input '{t.name}': datatype {t.datatype} given, model expects {spec.datatype}")
        shape = t.shape
        if len(shape) != len(spec.shape) or any(s != -1 and s != d for s, d in zip(spec.shape, shape, strict=True)):
            raise invalid(f"input '{t.name}': shape {_fmt(shape)} does not match the model's {_fmt(spec.shape)} "
                          "(-1 is any size)")
        arrays[t.name] = t.data
    missing = [name for name in info.input_index if name not in arrays]
    if missing:
        raise invalid(f"missing input(s) {', '.join(repr(m) for m in missing)} for model '{info.model}'")
    rows = 1
    if info.batching.enabled:
        if any(a.ndim == 0 for a in arrays.values()):
            raise invalid(f"model '{info.model}' batches along the first dimension; its inputs cannot be scalars")
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise invalid(f"inputs disagree on the batch size (first dimension): {sorted(sizes)}")
        rows = sizes.pop()
        limit = info.batching.max_batch_size
        if rows < 1 or rows > limit:
            raise invalid(f"batch size {rows} is outside 1..{limit} for model '{info.model}'; split the request")
    return arrays, rows


def validate_outputs(info: VersionInfo, requested: tuple[RequestedOutput, ...]) -> None:
    for r in requested:
        if r.name not in info.output_index:
            raise invalid(f"model '{info.model}' has no output '{r.name}' "
                          f"(outputs: {', '.join(info.output_index)})")
