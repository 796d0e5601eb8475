"""Checks a decoded request against the model version's signature before anything is queued."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from gateway.errors import Code, GatewayError, invalid
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.types import RequestedOutput, Tensor


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def validate_inputs(info: VersionInfo, inputs: tuple[Tensor, ...]) -> tuple[dict[str, np.ndarray], int]:
    """Returns the inputs by name and the batch size (rows along the first dimension)."""
    arrays: dict[str, np.ndarray] = {}
    for t in inputs:
        spec = info.input_index.get(t.name)
        if spec is None:
            raise invalid(f"model '{info.model}' has no input '{t.name}' (inputs: {', '.join(info.input_index)})")
        if t.name in arrays:
            raise invalid(f"input '{t.name}' appears twice")
        if t.datatype != spec.datatype:
            raise invalid(f"input '{t.name}': datatype {t.datatype} given, model expects {spec.datatype}")
        shape = t.shape
        if len(shape) != len(spec.shape) or any(s != -1 and s != d for s, d in zip(spec.shape, shape, strict=True)):
            raise invalid(
                f"input '{t.name}': shape {_fmt(shape)} does not match the model's {_fmt(spec.shape)} (-1 is any size)"
            )
        arrays[t.name] = t.data
    if info.nan_policy == "reject":
        for name, a in arrays.items():
            if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
                raise invalid(
                    f"input '{name}' holds NaN or infinite values, which model '{info.model}' "
                    f"version '{info.version}' refuses (nan_policy: reject)"
                )
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
            raise invalid(f"model '{info.model}' has no output '{r.name}' (outputs: {', '.join(info.output_index)})")


def check_declared_rows(
    catalog: Catalog, model: str, version: str | None, shapes: Iterable[tuple[str, Sequence[int]]], max_rows: int
) -> None:
    """Refuses too many rows from the declared shapes alone, before any tensor is decoded.

    `max_rows` caps every request; a batched model's `max_batch_size` caps its own (for an unpinned
    request, the largest of its versions'). Unknown models pass: the data plane answers NOT_FOUND.
    """
    try:
        versions = catalog.model_versions(model)
    except GatewayError:
        versions = {}
    infos = [versions[version]] if version in versions else list(versions.values()) if version is None else []
    limit = max(i.batching.max_batch_size for i in infos) if infos and all(i.batching.enabled for i in infos) else 0
    for name, shape in shapes:
        rows = shape[0] if len(shape) else 1
        if not isinstance(rows, int) or rows <= 0:
            continue  # the codec names a bad dimension; zero rows are refused after decoding
        if rows > max_rows:
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED,
                f"input '{name}': {rows} rows, over the limit of "
                f"{max_rows} rows per request (max_request_rows); split the request",
            )
        if limit and rows > limit:
            raise invalid(f"batch size {rows} is outside 1..{limit} for model '{model}'; split the request")
