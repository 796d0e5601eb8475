"""The retraining job's data: logged inputs of one model joined to their feedback labels, and the held-out split.

Reads the request log's public record format (docs/REQUEST_LOG.md) with the gateway's own reader, so
segments in either form (.jsonl, compacted .parquet) and partial last lines are handled one way everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.request_log.feedback import latest_labels, read_feedback
from contract.request_log.format import tensor_from_json
from contract.request_log.reader import RequestLogReader


@dataclass
class Labelled:
    """Rows of logged inputs with a ground-truth label, oldest first."""

    x: np.ndarray  # [n, features] float32
    y: np.ndarray  # [n] int64
    times: np.ndarray  # [n] unix seconds of the request each row came with
    request_ids: list[str]
    scanned: int = 0  # request records of the model inside the window
    labelled_requests: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.y)

    def window(self, since: float, until: float) -> dict[str, Any]:
        """The data window as lineage records it."""
        return {
            "since": since,
            "until": until,
            "first_request_time": float(self.times.min()) if self.rows else None,
            "last_request_time": float(self.times.max()) if self.rows else None,
            "request_records": self.scanned,
            "labelled_requests": self.labelled_requests,
            "labelled_rows": self.rows,
            "skipped_requests": dict(sorted(self.skipped.items())),
        }


def row_labels(label: Any, rows: int, n_classes: int) -> np.ndarray | None:
    """One class index per row: a number labels a one-row request, a list one label per row; None if unusable."""
    values = label if isinstance(label, list) else [label]
    if len(values) != rows:
        return None
    out = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(out)) or not np.all(out == np.round(out)) or out.min() < 0 or out.max() >= n_classes:
        return None
    return out.astype(np.int64)


def load_labelled(
    log_dir: Path | str,
    model: str,
    input_name: str,
    n_features: int,
    n_classes: int,
    since: float,
    until: float,
    max_rows: int,
) -> Labelled:
    """Logged, answered requests of `model` received in [since, until) that have a feedback label.

    Shadow calls are left out (they repeat a request's inputs). A request id labelled more than once
    takes its newest label. At most max_rows rows are kept, the newest ones."""
    labels = latest_labels(read_feedback(log_dir, model))
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    times: list[float] = []
    ids: list[str] = []
    skipped: Counter[str] = Counter()
    scanned = 0
    seen: set[str] = set()
    for rec in RequestLogReader(log_dir):
        if rec.get("model") != model or not since <= float(rec.get("time", 0.0)) < until:
            continue
        scanned += 1
        rid = str(rec.get("request_id", ""))
        if rec.get("code") != "OK" or rec.get("role") == "shadow":
            skipped["not_answered" if rec.get("code") != "OK" else "shadow"] += 1
            continue
        if rid not in labels:
            skipped["no_label"] += 1
            continue
        if rid in seen:
            skipped["duplicate_request_id"] += 1
            continue
        tensors = {t["name"]: t for t in rec.get("inputs", [])}
        if input_name not in tensors or tensors[input_name].get("data") is None:
            skipped["no_input_data"] += 1  # truncated or redacted in the log
            continue
        x = tensor_from_json(tensors[input_name]).data
        if x.ndim != 2 or x.shape[1] != n_features:
            skipped["input_shape"] += 1
            continue
        y = row_labels(labels[rid]["label"], len(x), n_classes)
        if y is None:
            skipped["label_unusable"] += 1
            continue
        seen.add(rid)
        xs.append(x.astype(np.float32))
        ys.append(y)
        times.extend([float(rec["time"])] * len(x))
        ids.extend([rid] * len(x))
    if not xs:
        return Labelled(
            np.empty((0, n_features), np.float32),
            np.empty((0,), np.int64),
            np.empty((0,)),
            [],
            scanned,
            0,
            dict(skipped),
        )
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")[-max_rows:]
    return Labelled(
        np.concatenate(xs)[order],
        np.concatenate(ys)[order],
        t[order],
        [ids[i] for i in order],
        scanned,
        len(seen),
        dict(skipped),
    )


def split_held_out(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a seeded split stratified by class, `fraction` of each class held out
    (at least one row of each). Raises ValueError when a class has fewer than two rows."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        if len(idx) < 2:
            raise ValueError(f"class {int(cls)} has {len(idx)} labelled row(s); a held-out split needs two or more")
        idx = rng.permutation(idx)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
