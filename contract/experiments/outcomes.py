"""Outcomes: what one answered request and its ground-truth label are worth to an experiment's metric.

The gateway's outcome joiner calls this for each request log record whose label has arrived; it is pure
(no files, no Ray) so the metrics are unit-tested on their own. One value per row of the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.request_log.format import tensor_from_json

METRICS = ("accuracy", "error_rate", "mean", "log_loss")
"""accuracy / error_rate: a class label against the predicted class; mean: a numeric outcome (revenue, a
click); log_loss: a class label against the predicted class probabilities."""
LOWER_IS_BETTER = frozenset({"error_rate", "log_loss"})
NEEDS_OUTPUT = frozenset({"accuracy", "error_rate", "log_loss"})
EPS = 1e-15  # log-loss clips probabilities away from 0, as scikit-learn does


class OutcomeError(ValueError):
    """A record and label that cannot be scored (e.g. no output to compare with): skipped and counted."""


def _outputs(record: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    out = {}
    for t in record.get("outputs") or []:
        tensor = tensor_from_json(t)
        if tensor.data.size:
            out[tensor.name] = np.asarray(tensor.data)
    return out


def _labels(label: Any, rows: int) -> npt.NDArray[np.float64]:
    values = np.asarray(label if isinstance(label, list) else [label], dtype=np.float64).ravel()
    if values.size != rows:
        raise OutcomeError(f"{values.size} label value(s) for a request of {rows} row(s)")
    return values


def _probabilities(outputs: dict[str, npt.NDArray[Any]], name: str | None) -> npt.NDArray[np.float64] | None:
    if name is not None:
        arr = outputs.get(name)
        return None if arr is None or arr.ndim != 2 or arr.dtype.kind != "f" else arr.astype(np.float64)
    for arr in outputs.values():  # the first floating output of shape [rows, classes]
        if arr.ndim == 2 and arr.dtype.kind == "f" and arr.shape[1] >= 2:
            return arr.astype(np.float64)
    return None


def _classes(outputs: dict[str, npt.NDArray[Any]], name: str | None) -> npt.NDArray[np.float64]:
    if name is not None and name in outputs and outputs[name].ndim == 1:
        return outputs[name].astype(np.float64)
    if name is None:
        for arr in outputs.values():  # an integer class per row
            if arr.ndim == 1 and arr.dtype.kind in "iu":
                return arr.astype(np.float64)
    probabilities = _probabilities(outputs, name)
    if probabilities is None:
        raise OutcomeError(f"no class output{f' named {name!r}' if name else ''} in the logged answer")
    return np.asarray(probabilities.argmax(axis=1), dtype=np.float64)


def score(metric: str, record: Mapping[str, Any], label: Any, output: str | None = None) -> npt.NDArray[np.float64]:
    """One outcome per row: 1/0 for accuracy (0/1 for error_rate), the label itself for mean, and
    -log(p[label]) for log_loss. `output` names the output to read (default: found by shape and type)."""
    if metric == "mean":
        return np.asarray(label if isinstance(label, list) else [label], dtype=np.float64).ravel()
    outputs = _outputs(record)
    if not outputs:
        raise OutcomeError("the request log record holds no outputs (not logged, or the request failed)")
    if metric in ("accuracy", "error_rate"):
        predicted = _classes(outputs, output)
        right = (predicted == _labels(label, predicted.size)).astype(np.float64)
        return right if metric == "accuracy" else np.asarray(1.0 - right, dtype=np.float64)
    if metric == "log_loss":
        probabilities = _probabilities(outputs, output)
        if probabilities is None:
            raise OutcomeError("log_loss needs an output of class probabilities [rows, classes]")
        labels = _labels(label, probabilities.shape[0]).astype(np.int64)
        if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
            raise OutcomeError(f"a class label outside 0..{probabilities.shape[1] - 1}")
        picked = probabilities[np.arange(labels.size), labels]
        return np.asarray(-np.log(np.clip(picked, EPS, 1.0)), dtype=np.float64)
    raise OutcomeError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
