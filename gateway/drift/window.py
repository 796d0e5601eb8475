"""Windows of live rows per (model, version): rows pulled out of request-log records, counted into
windows of N rows, numbered 0, 1, ... in log order, closed early by the records' own clock (max age).

Everything here depends only on the log's content, so two sidecars reading the same log close the same
windows with the same numbers and rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.drift.reference import ReferenceProfile
from gateway.drift.stats import F64


@dataclass
class Rows:
    """Rows of one record: flat row-major feature values and prediction values (JSON null is None)."""

    n: int
    x: list[Any]
    p: list[Any]


def _tensor(tensors: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(tensors, list) or not tensors:
        return None
    first = tensors[0]
    if isinstance(first, dict) and first.get("name") == name:  # the usual case, first in signature order
        return first
    for t in tensors:
        if isinstance(t, dict) and t.get("name") == name:
            return t
    return None


def extract(record: dict[str, Any], profile: ReferenceProfile) -> Rows | str:
    """The record's rows, or why it has none usable ('no_data': truncated or redacted; 'malformed')."""
    width = profile.width
    if record.get("truncated"):
        return "no_data"
    if len(profile.input_names) == 1:
        t = _tensor(record.get("inputs"), profile.input_names[0])
        if t is None:
            return "malformed"
        data, shape = t.get("data"), t.get("shape")
        if data is None:
            return "no_data"
        if not isinstance(data, list) or not shape or len(data) != shape[0] * width:
            return "malformed"
        n = int(shape[0])
        x = data
    else:
        parts = []
        for name in profile.input_names:
            t = _tensor(record.get("inputs"), name)
            if t is None:
                return "malformed"
            if t.get("data") is None:
                return "no_data"
            try:
                parts.append(np.asarray(t["data"], dtype=np.float64).reshape(int(t["shape"][0]), -1))
            except (ValueError, TypeError, IndexError, KeyError):
                return "malformed"
        n = parts[0].shape[0]
        if any(a.shape[0] != n for a in parts) or sum(a.shape[1] for a in parts) != width:
            return "malformed"
        x = np.concatenate(parts, axis=1).ravel().tolist()
    p: list[Any] = []
    cols = profile.prediction_columns
    if cols:
        o = _tensor(record.get("outputs"), profile.prediction_output)
        if o is None or o.get("data") is None:
            return "no_data"
        pdata, w = o["data"], profile.prediction_width
        if not isinstance(pdata, list) or len(pdata) != n * w:
            return "malformed"
        if len(cols) == w:
            p = pdata
        elif len(cols) == 1:
            p = pdata[cols[0] :: w]
        else:
            p = np.asarray(pdata, dtype=np.float64).reshape(n, w)[:, cols].ravel().tolist()
    return Rows(n, x, p)


@dataclass
class ClosedWindow:
    model: str
    version: str
    index: int
    x: F64  # (rows, features)
    p: F64  # (rows, prediction columns)
    first_time: float
    last_time: float

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class OpenWindow:
    """The window being filled; its rows are kept as flat lists (appending is the per-record hot path)."""

    model: str
    version: str
    index: int
    width: int
    pwidth: int
    rows: int = 0
    x: list[Any] = field(default_factory=list)
    p: list[Any] = field(default_factory=list)
    first_time: float = 0.0
    last_time: float = 0.0

    def arrays(self) -> tuple[F64, F64]:
        x = np.array(self.x, dtype=np.float64).reshape(self.rows, self.width)  # None (JSON null) becomes NaN
        p = np.array(self.p, dtype=np.float64).reshape(self.rows, self.pwidth)
        return x, p

    def close(self) -> ClosedWindow:
        x, p = self.arrays()
        return ClosedWindow(self.model, self.version, self.index, x, p, self.first_time, self.last_time)

    def add(self, rows: Rows, t: float, window_rows: int, max_age_s: float) -> list[ClosedWindow]:
        """Adds a record's rows; returns the windows this closed (a record may span windows), self is then
        the next window (its number one higher)."""
        closed = []
        if self.rows and t - self.first_time > max_age_s:
            closed.append(self._next())
        start = 0
        while start < rows.n:
            if not self.rows:
                self.first_time = t
            take = min(rows.n - start, window_rows - self.rows)
            self.x.extend(
                rows.x[start * self.width : (start + take) * self.width] if (start or take < rows.n) else rows.x
            )
            if self.pwidth:
                self.p.extend(
                    rows.p[start * self.pwidth : (start + take) * self.pwidth] if (start or take < rows.n) else rows.p
                )
            self.rows += take
            self.last_time = t
            start += take
            if self.rows >= window_rows:
                closed.append(self._next())
        return closed

    def _next(self) -> ClosedWindow:
        done = self.close()
        self.index += 1
        self.rows, self.x, self.p = 0, [], []
        return done
