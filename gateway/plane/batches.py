"""Batch mechanics shared by the primary batcher (plane/batching.py) and the shadow lanes (traffic/shadow.py):
which requests may share a call, one call's inputs from many requests, and each request's rows of the answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from contract.tensors import Arrays


def batch_key(inputs: Arrays) -> tuple[object, ...]:
    """Requests share a call only when every input agrees on dtype and trailing shape."""
    return tuple([(name, a.dtype, a.shape[1:]) for name, a in inputs.items()])


def concat(parts: Sequence[Arrays]) -> Arrays:
    """One call's inputs: the parts stacked along the batch axis (a lone part as it is, no copy)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def rows_match(out: Arrays, rows: int) -> bool:
    """Every output has the batch's rows along its first axis (a model that does not is answered INTERNAL)."""
    return all(len(v) == rows for v in out.values())


def split(out: Arrays, rows: Sequence[int]) -> Iterator[Arrays]:
    """Each part's rows of the call's outputs, in order, as views (a lone part gets the outputs as they are)."""
    if len(rows) == 1:
        yield out
        return
    start = 0
    for n in rows:
        yield {k: v[start : start + n] for k, v in out.items()}
        start += n
