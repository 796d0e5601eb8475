"""The drift statistics against SciPy's on the same samples, and PSI's verdict on seeded shifts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, chisquare, ks_2samp

from gateway.drift import stats


def _columns(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four kinds of column: normal, skewed, heavily tied integers, and constant-ish with outliers."""
    return np.stack(
        [
            rng.normal(0, 1, n),
            rng.lognormal(0, 1, n),
            rng.integers(0, 5, n).astype(float),
            np.where(rng.random(n) < 0.9, 1.0, rng.normal(5, 1, n)),
        ],
        axis=1,
    )


@pytest.mark.parametrize(
    ("n_ref", "n_live", "shift"), [(500, 300, 0.0), (2000, 1000, 0.3), (50, 4000, 1.0), (12000, 11000, 0.05)]
)
def test_ks_matches_scipy(n_ref: int, n_live: int, shift: float) -> None:
    rng = np.random.default_rng(n_ref + n_live)
    ref, live = _columns(rng, n_ref), _columns(rng, n_live) + shift
    stat, p = stats.ks_2samp(stats.sorted_columns(ref), live)
    for j in range(ref.shape[1]):
        want = ks_2samp(ref[:, j], live[:, j], method="asymp")
        assert stat[j] == pytest.approx(want.statistic, abs=1e-12)
        assert p[j] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
        # The statistic does not depend on how scipy computes its p-value.
        assert stat[j] == pytest.approx(ks_2samp(ref[:, j], live[:, j]).statistic, abs=1e-12)


def test_ks_leaves_out_nan_per_feature() -> None:
    rng = np.random.default_rng(3)
    ref, live = rng.normal(size=(400, 2)), rng.normal(0.2, 1, size=(300, 2))
    live[::7, 0] = np.nan
    ref[::5, 1] = np.nan
    stat, p = stats.ks_2samp(stats.sorted_columns(ref), live)
    for j in range(2):
        a, b = ref[:, j][~np.isnan(ref[:, j])], live[:, j][~np.isnan(live[:, j])]
        want = ks_2samp(a, b, method="asymp")
        assert (stat[j], p[j]) == pytest.approx((want.statistic, want.pvalue), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.lists(st.integers(-3, 3), min_size=1, max_size=60))
def test_ks_statistic_matches_scipy_with_ties(a: list[int], b: list[int]) -> None:
    ref, live = np.array(a, dtype=float)[:, None], np.array(b, dtype=float)[:, None]
    stat, p = stats.ks_2samp(stats.sorted_columns(ref), live)
    want = ks_2samp(ref[:, 0], live[:, 0], method="asymp")
    assert stat[0] == pytest.approx(want.statistic, abs=1e-12)
    assert p[0] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-12, nan_ok=True)  # one row each: no p-value


def test_js_distance_matches_scipy_on_the_same_histograms() -> None:
    rng = np.random.default_rng(7)
    ref, live = _columns(rng, 3000), _columns(rng, 800) * 1.2
    edges = stats.quantile_edges(ref, 10)
    rc, lc = stats.bin_counts(ref, edges), stats.bin_counts(live, edges)
    js = stats.js_distance(rc, lc)
    for j in range(ref.shape[1]):
        assert js[j] == pytest.approx(jensenshannon(rc[j], lc[j], base=2), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=2, max_size=12).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.integers(0, 50), min_size=len(a), max_size=len(a)))
    )
)
def test_js_distance_properties(pair: tuple[list[int], list[int]]) -> None:
    a, b = (np.array([x], dtype=np.int64) for x in pair)
    if a.sum() == 0 or b.sum() == 0:
        assert np.isnan(stats.js_distance(a, b)[0])
        return
    d = stats.js_distance(a, b)[0]
    assert 0.0 <= d <= 1.0 + 1e-12
    assert d == pytest.approx(stats.js_distance(b, a)[0], abs=1e-12)
    assert d == pytest.approx(jensenshannon(a[0], b[0], base=2), abs=1e-9)
    assert stats.js_distance(a, a * 3)[0] == pytest.approx(0.0, abs=1e-7)


def test_chi_square_matches_chi2_contingency() -> None:
    rng = np.random.default_rng(11)
    ref = rng.choice([0.0, 1.0, 2.0, 5.0], size=(4000, 3), p=[0.4, 0.3, 0.2, 0.1])
    live = rng.choice([0.0, 1.0, 2.0, 5.0, 9.0], size=(700, 3), p=[0.3, 0.3, 0.2, 0.1, 0.1])
    live[:, 2] = rng.choice([0.0, 1.0, 2.0, 5.0], size=700, p=[0.4, 0.3, 0.2, 0.1])
    cats = [np.unique(ref[:, j]) for j in range(3)]
    rc, lc = stats.category_counts(ref, cats), stats.category_counts(live, cats)
    assert lc[0, -1] > 0 and rc[0, -1] == 0  # 9.0 is no reference category: it counts as 'other'
    stat, p = stats.chi_square(rc, lc)
    for j in range(3):
        table = np.stack([rc[j], lc[j]])
        table = table[:, table.sum(axis=0) > 0]  # scipy refuses categories empty on both sides
        want = chi2_contingency(table, correction=False)
        assert stat[j] == pytest.approx(want.statistic, rel=1e-10)
        assert p[j] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert p[2] > 0.001 > p[0]


def test_chi_square_with_two_categories_is_the_uncorrected_test() -> None:
    rc, lc = np.array([[300, 700, 0]]), np.array([[40, 60, 0]])
    stat, p = stats.chi_square(rc, lc)
    want = chi2_contingency(np.array([[300, 700], [40, 60]]), correction=False)
    assert (stat[0], p[0]) == pytest.approx((want.statistic, want.pvalue), rel=1e-10)
    # With a reference so large that its proportions are exact, the homogeneity test tends to scipy's
    # goodness-of-fit test of the window against the reference's proportions.
    big = np.array([[3_000_000, 7_000_000, 0]])
    fit = chisquare([40, 60], f_exp=[30, 70])
    assert stats.chi_square(big, lc)[0][0] == pytest.approx(fit.statistic, rel=1e-4)


def test_chi_square_without_data_is_nan() -> None:
    stat, p = stats.chi_square(np.array([[10, 0, 0], [5, 5, 0]]), np.array([[4, 0, 0], [0, 0, 0]]))
    assert np.isnan(stat).all() and np.isnan(p).all()


def test_psi_by_hand() -> None:
    rc, lc = np.array([[25, 25, 25, 25]]), np.array([[10, 20, 30, 40]])
    p, q = np.full(4, 0.25), np.array([0.1, 0.2, 0.3, 0.4])
    assert stats.psi(rc, lc)[0] == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-12)
    # An empty bin counts as PSI_EPSILON, so the score is large but finite.
    empty = stats.psi(rc, np.array([[0, 50, 25, 25]]))[0]
    q = np.array([stats.PSI_EPSILON, 0.5, 0.25, 0.25])
    assert empty == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 100), min_size=2, max_size=10).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.integers(0, 100), min_size=len(a), max_size=len(a)))
    )
)
def test_psi_properties(pair: tuple[list[int], list[int]]) -> None:
    a, b = (np.array([x], dtype=np.int64) for x in pair)
    if a.sum() == 0 or b.sum() == 0:
        return
    v = stats.psi(a, b)[0]
    assert v >= -1e-12
    assert v == pytest.approx(stats.psi(b, a)[0], rel=1e-9, abs=1e-12)  # PSI is symmetric
    assert stats.psi(a, a * 7)[0] == pytest.approx(0.0, abs=1e-12)


def test_quantile_edges_give_equal_reference_mass_and_catch_values_beyond_the_range() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(10_000, 2))
    ref[:, 1] = rng.integers(0, 3, 10_000)  # three distinct values: repeated edges become +inf
    edges = stats.quantile_edges(ref, 10)
    counts = stats.bin_counts(ref, edges)
    assert counts.shape == (2, 10)
    assert np.all(np.abs(counts[0] - 1000) <= 1)
    assert np.isinf(edges[1]).sum() >= 6 and (counts[1] > 0).sum() == 3
    far = stats.bin_counts(np.array([[-1e9, 1e9], [1e9, -1e9]]), edges)
    assert far[0, 0] == 1 and far[0, -1] == 1
    assert stats.psi(counts, counts)[0] == pytest.approx(0.0, abs=1e-12)  # empty padded bins add nothing


def test_bin_counts_leave_out_nan() -> None:
    edges = stats.quantile_edges(np.arange(100.0)[:, None], 4)
    counts = stats.bin_counts(np.array([[np.nan], [1.0], [99.0]]), edges)
    assert counts.sum() == 2


BINS, N_REF, N_LIVE, THRESHOLD = 10, 5000, 1000, 0.25


@pytest.mark.parametrize("seed", range(20))
def test_psi_separates_a_mean_shift_from_no_shift(seed: int) -> None:
    """Under no shift PSI's expectation is about (bins - 1) (1/n_ref + 1/n_live), 0.011 here, with a spread of
    the same order: 0.1 is out of reach. A shift of half a standard deviation gives about 0.25 on a normal
    feature with these bins, and a full one about 1: well over the default threshold."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(10, 2, size=(N_REF, 3))
    edges = stats.quantile_edges(ref, BINS)
    rc = stats.bin_counts(ref, edges)
    same = stats.psi(rc, stats.bin_counts(rng.normal(10, 2, size=(N_LIVE, 3)), edges))
    shifted = stats.psi(rc, stats.bin_counts(rng.normal(12, 2, size=(N_LIVE, 3)), edges))
    assert (same < 0.1).all(), same
    assert (shifted > THRESHOLD).all(), shifted
    assert (shifted > 0.6).all(), shifted
