"""The retraining job's data: logged inputs of one model joined to their feedback labels, and the held-out split
(by time and by input identity, so the decision is made on rows the new version never trained on).

Reads the request log's public record format (docs/REQUEST_LOG.md) with the gateway's own reader, so
segments in either form (.jsonl, compacted .parquet) and partial last lines are handled one way everywhere.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.experiments.outcomes import OutcomeError, score
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
    outcomes: int = 0  # rows whose logged answer an experiment could score against the label (accuracy)
    latest_label: float | None = None  # when the model's newest feedback label was written

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
    latest = max((float(r["time"]) for r in labels.values()), default=None)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    times: list[float] = []
    ids: list[str] = []
    skipped: Counter[str] = Counter()
    scanned = outcomes = 0
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
        outcomes += _scorable(rec, labels[rid]["label"])
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
            0,
            latest,
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
        outcomes,
        latest,
    )


def _scorable(record: dict[str, Any], label: Any) -> int:
    """Rows of a labelled request that an experiment's outcome join could score: its answer was logged with
    its outputs (the same scoring as the gateway's join, contract/experiments/outcomes.py)."""
    try:
        return int(score("accuracy", record, label).size)
    except (OutcomeError, ValueError, KeyError, TypeError):
        return 0


def row_keys(x: np.ndarray) -> list[bytes]:
    """One identity per input row: a digest of its float32 bytes, equal exactly when the inputs are equal."""
    rows = np.ascontiguousarray(np.asarray(x, np.float32).reshape(len(x), -1) + np.float32(0.0))  # -0.0 is 0.0
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


@dataclass(frozen=True)
class HeldOut:
    """The held-out split of the labelled logged rows: indices into them, and how the held-out set was built."""

    train: np.ndarray  # rows trained on (with the reference rows)
    test: np.ndarray  # rows held out
    since: float | None  # start of the held-out window: rows received at or after it were candidates
    window_rows: int  # labelled rows in that window
    seen_in_training: int  # of them, inputs equal to a training or reference row: trained on, never held out
    repeated: int  # of them, older repeats of an input already held out: neither trained on nor held out

    def describe(self, fraction: float, y: np.ndarray, min_rows: int) -> dict[str, Any]:
        """The held-out set as the lineage and the job's result record it."""
        classes = np.unique(y[self.test], return_counts=True)
        return {
            "method": "time and identity: the newest labelled logged rows of the window (received at or after "
            "`since`), each distinct input once, none equal to a row trained on (reference rows "
            "included)",
            "fraction": fraction,
            "since": self.since,
            "window_rows": self.window_rows,
            "seen_in_training": self.seen_in_training,
            "repeated": self.repeated,
            "rows": len(self.test),
            "classes": {str(int(c)): int(n) for c, n in zip(*classes, strict=True)},
            "min_rows": min_rows,
        }


def split_held_out(x: np.ndarray, times: np.ndarray, fraction: float, reference: np.ndarray | None = None) -> HeldOut:
    """Holds out the newest `fraction` of the labelled rows, by time and by identity.

    The held-out window starts at the time of the round(fraction * n)-th newest row (a request's rows share its
    time, so a request is never cut in two). A row in the window whose input equals a row before the window or
    a reference row is trained on instead, and an input that comes back in the window is held out once, with
    its newest label: no input of the held-out set is ever trained on, however often clients send it."""
    n = len(x)
    if n == 0:
        empty = np.empty((0,), np.int64)
        return HeldOut(empty, empty, None, 0, 0, 0)
    order = np.argsort(times, kind="stable")
    since = float(times[order[n - min(n, max(1, round(fraction * n)))]])
    in_window = times >= since
    keys = row_keys(x)
    trained = {keys[i] for i in np.flatnonzero(~in_window)}
    if reference is not None and len(reference):
        trained.update(row_keys(reference))
    train = [int(i) for i in np.flatnonzero(~in_window)]
    test: list[int] = []
    held: set[bytes] = set()
    seen = repeated = 0
    for i in order[::-1]:  # newest first: a repeated input keeps its newest label
        if not in_window[i]:
            break
        if keys[i] in trained:
            train.append(int(i))
            seen += 1
        elif keys[i] in held:
            repeated += 1
        else:
            held.add(keys[i])
            test.append(int(i))
    return HeldOut(
        np.sort(np.asarray(train, np.int64)),
        np.sort(np.asarray(test, np.int64)),
        since,
        int(in_window.sum()),
        seen,
        repeated,
    )
