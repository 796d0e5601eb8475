"""The experiment statistics: known values, and simulations that check the promises of docs/EXPERIMENTS.md.

A/A experiments read after every single observation keep their false positive rate at or under alpha (with
several arms too, thanks to the Bonferroni split); an A/B with a real 2-point difference is found within
the planned sample size. Vectorised over runs and steps, so the whole file takes a few seconds.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import pytest

from contract.experiments.stats import Moments, difference, half_width, mean_interval, planned_samples, tuning

ALPHA = 0.05


def test_moments_match_numpy() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, 1000)
    m = Moments().add(x[:400]).add(x[400:])
    assert m.n == 1000 and m.mean == pytest.approx(x.mean()) and m.variance == pytest.approx(x.var(ddof=1))
    assert Moments.from_list(m.to_list()) == m
    assert math.isnan(Moments().mean) and math.isnan(Moments().add([1.0]).variance)


def test_half_width_known_value() -> None:
    # sqrt(1 * (1 + 1/1) * (log(2) + 2 log(20)))
    assert float(half_width(1.0, 1.0, 0.05, 1.0)) == pytest.approx(math.sqrt(2 * (math.log(2) + 2 * math.log(20))))
    assert float(half_width(1.0, 1.0, 0.05, 1.0)) == pytest.approx(3.6564, abs=1e-4)


def test_the_sequence_is_wider_than_a_fixed_horizon_interval_and_shrinks() -> None:
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    scale = tuning(1000, ALPHA)
    widths = []
    for n in (10, 100, 1000, 10_000, 100_000):
        var_diff = 2 * 0.25 / n
        h = float(half_width(var_diff, n / 2, ALPHA, scale))
        assert h > z * math.sqrt(var_diff)  # the price of reading it at every step
        widths.append(h)
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02
    # At the size it is tuned for, it costs about 1.5x the fixed-horizon width (2.4x the samples).
    h = float(half_width(2 * 0.25 / 1000, 500, ALPHA, scale))
    assert 1.4 < h / (z * math.sqrt(2 * 0.25 / 1000)) < 1.7


def test_difference_orientation_and_intervals() -> None:
    control = Moments().add(np.r_[np.ones(900), np.zeros(100)])  # 90%
    arm = Moments().add(np.r_[np.ones(950), np.zeros(50)])  # 95%
    scale = tuning(1000, ALPHA)
    up = difference(arm, control, ALPHA, scale, higher_is_better=True)
    assert up.estimate == pytest.approx(0.05) and up.better and not up.worse
    down = difference(arm, control, ALPHA, scale, higher_is_better=False)  # an error rate: higher is worse
    assert down.estimate == pytest.approx(-0.05) and down.worse
    low, high = mean_interval(arm, ALPHA, scale)
    assert low < 0.95 < high
    unknown = difference(Moments().add([1.0]), control, ALPHA, scale, True)
    assert math.isinf(unknown.low) and not unknown.better and not unknown.worse


def test_planned_samples_lies_between_fixed_horizon_and_three_times_it() -> None:
    fixed = 2 * 0.25 * (NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)) ** 2 / 0.02**2
    n = planned_samples(0.02, 0.25, ALPHA)
    assert fixed < n < 3 * fixed


def first_crossing(arms: npt.NDArray[np.float64], alpha: float, n_opt: int, min_samples: int) -> npt.NDArray[np.int64]:
    """arms: [runs, arms, steps] outcomes, arm 0 is control, one observation per arm per step. Returns, per run,
    the first step (1-based) at which any arm's interval excluded 0, or 0 when none did: every step is a look."""
    steps = arms.shape[2]
    n = np.arange(1, steps + 1, dtype=np.float64)
    mean = arms.cumsum(axis=2) / n
    var = np.maximum((arms**2).cumsum(axis=2) / n - mean**2, 0.0) * n / np.maximum(n - 1, 1)
    var = np.maximum(var, 1.0 / (2 * n))  # the same floor as contract.experiments.stats.difference
    k = arms.shape[1] - 1
    a = alpha / k  # Bonferroni, as ExperimentPlan.arm_alpha
    h = half_width((var[:, 1:] + var[:, :1]) / n, n / 2, a, tuning(n_opt, a))
    d = mean[:, 1:] - mean[:, :1]
    hit = ((d - h > 0) | (d + h < 0)).any(axis=1)
    hit[:, : min_samples - 1] = False
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_aa_experiments_checked_at_every_step_keep_false_positives_under_alpha(p: float) -> None:
    rng = np.random.default_rng(7)
    arms = (rng.random((600, 2, 3000)) < p).astype(np.float64)
    rate = float((first_crossing(arms, ALPHA, 1500, 30) > 0).mean())
    assert rate <= ALPHA, f"false positive rate {rate:.3f} over {ALPHA}"


def test_aa_with_a_skewed_numeric_outcome_keeps_false_positives_under_alpha() -> None:
    rng = np.random.default_rng(11)
    revenue = rng.exponential(20.0, (600, 2, 2500))  # like revenue per visit: long right tail
    rate = float((first_crossing(revenue, ALPHA, 1500, 100) > 0).mean())
    assert rate <= ALPHA, f"false positive rate {rate:.3f} over {ALPHA}"


def test_aaa_with_three_treatments_keeps_the_familywise_rate_under_alpha() -> None:
    rng = np.random.default_rng(3)
    arms = (rng.random((400, 4, 2500)) < 0.5).astype(np.float64)
    rate = float((first_crossing(arms, ALPHA, 1500, 30) > 0).mean())
    assert rate <= ALPHA, f"family-wise false positive rate {rate:.3f} over {ALPHA}"


def test_ab_with_a_real_two_point_difference_is_found_within_the_planned_sample_size() -> None:
    planned = planned_samples(0.02, 0.25, ALPHA)  # 80% power by construction
    rng = np.random.default_rng(5)
    runs = 200
    control = rng.random((runs, 1, planned)) < 0.50
    treatment = rng.random((runs, 1, planned)) < 0.52
    first = first_crossing(np.concatenate([control, treatment], axis=1).astype(np.float64), ALPHA, planned, 100)
    found = first > 0
    assert found.mean() >= 0.7, f"found in {found.mean():.0%} of runs within {planned} samples per arm"
    assert np.median(first[found]) < 0.75 * planned  # and usually well before it
