"""Per-process outcome counters: latency histogram, error codes and the per-second series.

The hot path is one dict increment per response; each second's counts are folded into the
run histogram and a coarse per-second histogram when the second rolls over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtests.histogram import COARSE_SHIFT, Histogram, bucket_index, coarse_value, percentiles_of


@dataclass
class SecondStats:
    """Completions during one second of the measured window (by completion time)."""

    ok: int = 0
    errors: int = 0
    coarse: dict[int, int] = field(default_factory=dict)  # coarse bucket -> ok count
    max_us: int = 0  # exact, unlike percentiles from the coarse buckets


@dataclass
class ClassStats:
    """Outcomes of one traffic class of a mixed profile; `good` are answers within the class's deadline."""

    sent: int = 0
    ok: int = 0
    good: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)


@dataclass
class WorkerResult:
    """What one generator process measured; plain data so it pickles across processes."""

    scheduled: int = 0  # open loop: intended sends inside the window
    sent: int = 0
    ok: int = 0
    late: int = 0  # intended sends dropped because in-flight was at the bound
    errors_by_code: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)  # open loop: actual - intended send time
    series: dict[int, SecondStats] = field(default_factory=dict)
    window_s: float = 0.0  # length of the measured sending window actually run
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_inflight: int = 0
    classes: list[ClassStats] = field(default_factory=list)  # by class index, with --mix only


class Recorder:
    """Counts outcomes of measured requests; times are ``time.perf_counter()`` seconds."""

    def __init__(self, window_start: float, deadlines_s: list[float | None] | None = None) -> None:
        self.window_start = window_start
        self.result = WorkerResult()
        # Per class (with --mix): the deadline in microseconds, None for none.
        self._deadlines_us = [None if d is None else int(d * 1e6) for d in deadlines_s or ()]
        self.result.classes = [ClassStats() for _ in self._deadlines_us]
        self._second = 0
        self._counts: dict[int, int] = {}
        self._stats = SecondStats()

    def success(self, intended: float, done: float, kind: int = -1) -> None:
        second = int(done - self.window_start)
        if second != self._second:
            self.roll(second)
        micros = int((done - intended) * 1e6)
        index = bucket_index(micros)
        counts = self._counts
        counts[index] = counts.get(index, 0) + 1
        if micros > self._stats.max_us:
            self._stats.max_us = micros
        latency = self.result.latency
        latency.sum_us += micros
        if micros > latency.max_us:
            latency.max_us = micros
        if micros < latency.min_us:
            latency.min_us = micros
        self.result.ok += 1
        if kind >= 0:
            stats = self.result.classes[kind]
            stats.ok += 1
            stats.latency.record(micros)
            deadline = self._deadlines_us[kind]
            if deadline is None or micros <= deadline:
                stats.good += 1

    def sent(self, kind: int = -1) -> None:
        self.result.sent += 1
        if kind >= 0:
            self.result.classes[kind].sent += 1

    def failure(self, code: str, done: float, kind: int = -1) -> None:
        second = int(done - self.window_start)
        if second != self._second:
            self.roll(second)
        self._stats.errors += 1
        errors = self.result.errors_by_code
        errors[code] = errors.get(code, 0) + 1
        if kind >= 0:
            errors = self.result.classes[kind].errors_by_code
            errors[code] = errors.get(code, 0) + 1

    def lag(self, seconds: float) -> None:
        self.result.lag.record(int(seconds * 1e6) if seconds > 0 else 0)

    def roll(self, second: int) -> None:
        """Close the current second (and any silent ones before ``second``: a stall is news)."""
        if second <= self._second:
            return
        stats = self._stats
        for index, count in self._counts.items():
            stats.ok += count
            coarse = index >> COARSE_SHIFT
            stats.coarse[coarse] = stats.coarse.get(coarse, 0) + count
        self.result.latency.add_counts(self._counts)
        if stats.ok or stats.errors:
            self.result.series[self._second] = stats
        for silent in range(self._second + 1, second):
            self.result.series.setdefault(silent, SecondStats())
        self._second = second
        self._counts = {}
        self._stats = SecondStats()

    def last_second(self, now: float) -> tuple[int, float]:
        """(responses, p99 ms) of the last complete second, for the progress display."""
        self.roll(int(now - self.window_start))
        stats = self.result.series.get(self._second - 1)
        if stats is None:
            return 0, 0.0
        (p99,) = percentiles_of(stats.coarse, [99.0], coarse_value)
        return stats.ok + stats.errors, p99 / 1000.0

    def finish(self, now: float) -> WorkerResult:
        self.roll(int(now - self.window_start) + 1)
        return self.result
