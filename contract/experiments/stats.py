"""Always-valid statistics for experiments: confidence sequences on the difference of an arm's mean to control's.

Pure numpy (no Ray, no clock), shared by the traffic table actor that decides and the gateway that reports.
The bound is the two-sided normal-mixture boundary (Robbins; Howard et al. 2021) applied to the difference
of two sample means in information time, with plug-in variances: asymptotically valid (Waudby-Smith et al.,
"Time-uniform central limit theory"), so it may be read after every observation without inflating errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm's outcomes: count, sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        if self.n < 2:
            return math.nan
        return max(self.squares - self.total * self.total / self.n, 0.0) / (self.n - 1)

    def add(self, values: npt.ArrayLike) -> Moments:
        v = np.asarray(values, dtype=np.float64).ravel()
        return Moments(self.n + v.size, self.total + float(v.sum()), self.squares + float(v @ v))

    def to_list(self) -> list[float]:
        return [self.n, self.total, self.squares]

    @classmethod
    def from_list(cls, raw: list[float] | tuple[float, ...]) -> Moments:
        return cls(int(raw[0]), float(raw[1]), float(raw[2]))


def tuning(n_opt: float, alpha: float) -> float:
    """The mixture's scale per effective observation, chosen so the bound is tightest at n_opt per arm."""
    log_term = 2.0 * math.log(1.0 / alpha)
    return (log_term + math.log1p(log_term)) / max(n_opt / 2.0, 1.0)


def half_width(var_diff: Floats | float, n_eff: Floats | float, alpha: float, scale: float) -> Floats:
    """Half-width of the (1 - alpha) confidence sequence for a difference of means.

    var_diff: the variance of the difference's estimate (var_a / n_a + var_b / n_b); n_eff: the effective
    count n_a * n_b / (n_a + n_b). With x = n_eff * scale, the bound is
    sqrt(var_diff * (1 + 1/x) * (log(1 + x) + 2 log(1/alpha))), which no sample path crosses with
    probability over alpha, at any of infinitely many looks."""
    x = np.asarray(n_eff, dtype=np.float64) * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.asarray(var_diff) * (1.0 + 1.0 / x) * (np.log1p(x) + 2.0 * math.log(1.0 / alpha)))


@dataclass(frozen=True)
class Interval:
    """An arm's difference to control (oriented: positive is better) with its always-valid interval."""

    estimate: float
    low: float
    high: float

    @property
    def better(self) -> bool:
        return self.low > 0

    @property
    def worse(self) -> bool:
        return self.high < 0


def difference(arm: Moments, control: Moments, alpha: float, scale: float, higher_is_better: bool) -> Interval:
    """The always-valid interval of arm - control (control - arm when lower is better)."""
    if arm.n < 2 or control.n < 2:
        return Interval(math.nan, -math.inf, math.inf)
    sign = 1.0 if higher_is_better else -1.0
    estimate = sign * (arm.mean - control.mean)
    # A floor on the variance: an arm that has been right every time so far is not certain to stay so.
    floor = 1.0 / (arm.n + control.n)
    var_diff = max(arm.variance, floor) / arm.n + max(control.variance, floor) / control.n
    n_eff = arm.n * control.n / (arm.n + control.n)
    h = float(half_width(var_diff, n_eff, alpha, scale))
    return Interval(estimate, estimate - h, estimate + h)


def mean_interval(arm: Moments, alpha: float, scale: float) -> tuple[float, float]:
    """An always-valid interval of one arm's own mean (what `status` and the report plot show)."""
    if arm.n < 2:
        return -math.inf, math.inf
    h = float(half_width(max(arm.variance, 1.0 / arm.n) / arm.n, arm.n / 2.0, alpha, scale))
    return arm.mean - h, arm.mean + h


def planned_samples(mde: float, variance: float, alpha: float, power: float = 0.8, limit: int = 10**9) -> int:
    """Samples per arm (two equal arms) at which the sequence, tuned for that size, shows an effect of mde with
    the given power: half-width + z_power * standard error <= mde."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(power)

    def enough(n: int) -> bool:
        var_diff = 2.0 * variance / n
        return float(half_width(var_diff, n / 2.0, alpha, tuning(n, alpha))) + z * math.sqrt(var_diff) <= mde

    if mde <= 0 or variance <= 0:
        return limit
    low, high = 2, 4
    while not enough(high):
        if high >= limit:
            return limit
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
