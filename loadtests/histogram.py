"""Fixed-memory log-linear latency histogram (HDR-style), mergeable across processes.

Values are integer microseconds. Below 128 us every value has its own bucket; above, each
power of two is cut into 128 linear sub-buckets, so a bucket is at most 1/128 of its value
wide and a reported percentile (the bucket midpoint) is within 0.4% of a recorded value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS
# 2**40 us is about 12.7 days: anything longer is clamped, which no load run reaches.
MAX_VALUE_US = (1 << 40) - 1
BUCKET_COUNT = (40 - SUB_BITS + 1) * SUB_COUNT
# Per-second series use buckets 8x coarser (about 3% error) to keep memory per second small.
COARSE_SHIFT = 3
RELATIVE_ERROR = 1.0 / (2 * SUB_COUNT)


def bucket_index(value_us: int) -> int:
    """Bucket of a non-negative integer value; the hot path inlines nothing else."""
    if value_us < SUB_COUNT:
        return value_us if value_us > 0 else 0
    if value_us > MAX_VALUE_US:
        value_us = MAX_VALUE_US
    shift = value_us.bit_length() - 1 - SUB_BITS
    return ((shift + 1) << SUB_BITS) + (value_us >> shift) - SUB_COUNT


def bucket_bounds(index: int) -> tuple[int, int]:
    """Inclusive [low, high] values that land in bucket ``index``."""
    if index < SUB_COUNT:
        return index, index
    shift = (index >> SUB_BITS) - 1
    low = (SUB_COUNT + (index & (SUB_COUNT - 1))) << shift
    return low, low + (1 << shift) - 1


def bucket_value(index: int) -> float:
    """Representative value of a bucket: its midpoint, which halves the worst-case error."""
    low, high = bucket_bounds(index)
    return (low + high) / 2.0


def coarse_value(coarse_index: int) -> float:
    """Midpoint of a coarse bucket (a run of ``2**COARSE_SHIFT`` fine buckets)."""
    first = coarse_index << COARSE_SHIFT
    low, _ = bucket_bounds(first)
    _, high = bucket_bounds(first + (1 << COARSE_SHIFT) - 1)
    return (low + high) / 2.0


def percentiles_of(
    counts: Mapping[int, int],
    quantiles: Iterable[float],
    value_of: Callable[[int], float] = bucket_value,
) -> list[float]:
    """Percentiles (0-100) of a sparse ``{bucket: count}`` map, nearest-rank definition."""
    total = sum(counts.values())
    qs = list(quantiles)
    if total == 0:
        return [0.0 for _ in qs]
    # The epsilon keeps float noise (99.9 * 1000 / 100) from bumping a rank up by one.
    ranks = [max(1, math.ceil(q * total / 100.0 - 1e-9)) for q in qs]
    out: list[float] = [0.0] * len(qs)
    order = sorted(range(len(qs)), key=lambda i: ranks[i])
    seen = 0
    pos = 0
    for index in sorted(counts):
        seen += counts[index]
        while pos < len(order) and ranks[order[pos]] <= seen:
            out[order[pos]] = value_of(index)
            pos += 1
        if pos == len(order):
            break
    return out


@dataclass
class Histogram:
    """Dense bucket counts plus exact count, sum, min and max."""

    counts: list[int] = field(default_factory=lambda: [0] * BUCKET_COUNT)
    total: int = 0
    sum_us: int = 0
    min_us: int = MAX_VALUE_US
    max_us: int = 0

    def record(self, value_us: int, count: int = 1) -> None:
        self.counts[bucket_index(value_us)] += count
        self.total += count
        self.sum_us += value_us * count
        if value_us < self.min_us:
            self.min_us = value_us
        if value_us > self.max_us:
            self.max_us = value_us

    def add_counts(self, sparse: Mapping[int, int]) -> None:
        """Fold in bucket counts whose exact values were tracked elsewhere (sum/min/max)."""
        for index, count in sparse.items():
            self.counts[index] += count
            self.total += count

    def merge(self, other: Histogram) -> None:
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total
        self.sum_us += other.sum_us
        self.min_us = min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)

    def percentiles(self, quantiles: Iterable[float]) -> list[float]:
        """Percentiles in microseconds; the max is exact, others within RELATIVE_ERROR."""
        qs = list(quantiles)
        values = percentiles_of(self.sparse(), qs)
        # Clamp to the exact extremes so p100 (and tiny runs) never overshoot the real max.
        return [min(max(v, self.min_us), self.max_us) if self.total else 0.0 for v in values]

    def mean_us(self) -> float:
        return self.sum_us / self.total if self.total else 0.0

    def sparse(self) -> dict[int, int]:
        return {i: c for i, c in enumerate(self.counts) if c}

    def to_dict(self) -> dict[str, object]:
        """Compact, JSON- and pickle-friendly form used to ship results between processes."""
        return {
            "counts": self.sparse(),
            "total": self.total,
            "sum_us": self.sum_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        hist = cls()
        counts = data["counts"]
        assert isinstance(counts, Mapping)
        for index, count in counts.items():
            hist.counts[int(index)] += int(count)
        hist.total = _as_int(data["total"])
        hist.sum_us = _as_int(data["sum_us"])
        hist.min_us = _as_int(data["min_us"])
        hist.max_us = _as_int(data["max_us"])
        return hist


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value
