"""Drift statistics of one window against a version's reference: PSI, Kolmogorov-Smirnov, Jensen-Shannon
distance, chi-square. NumPy, vectorised over features; the reference side is precomputed once per version.

Numeric features are binned by the reference's quantiles (about equal reference mass per bin; the outer
bins are open, so live values beyond the reference's range land in them). PSI and Jensen-Shannon are
computed on those bins; KS is exact on the samples (the reference is kept sorted, the window is sorted
once). Categorical features are compared category by category (chi-square test of homogeneity).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray

PSI_EPSILON = 1e-4
"""PSI floor of a bin's proportion: an empty bin (in the reference or the window) counts as 1e-4, so one
empty bin adds a large but finite term instead of infinity."""

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def quantile_edges(ref: F64, bins: int) -> F64:
    """Interior bin edges, shape (features, bins - 1), from the reference's quantiles per column.

    Repeated edges (a feature with few distinct values) are replaced by +inf, so every feature has the
    same number of bins and the extra ones are always empty (they add nothing to PSI or JS)."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    if ref.shape[0] == 0:
        return np.full((ref.shape[1], bins - 1), np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has no quantiles
        edges = np.nanquantile(ref, qs, axis=0).T.astype(np.float64)  # (features, bins - 1)
    edges = np.where(np.isnan(edges), np.inf, edges)
    dup = np.zeros_like(edges, dtype=bool)
    dup[:, 1:] = edges[:, 1:] <= edges[:, :-1]
    edges = np.where(dup, np.inf, edges)
    edges.sort(axis=1)
    return np.ascontiguousarray(edges)


def bin_counts(x: F64, edges: F64) -> I64:
    """Counts per bin, shape (features, bins): bin = how many interior edges are <= the value. NaN is left out."""
    n, f = x.shape
    bins = edges.shape[1] + 1
    if n == 0:
        return np.zeros((f, bins), dtype=np.int64)
    idx = np.zeros((n, f), dtype=np.int64)
    for k in range(edges.shape[1]):  # bins - 1 vectorised comparisons over the whole window
        idx += x >= edges[:, k]
    flat = idx + np.arange(f, dtype=np.int64) * bins
    valid = ~np.isnan(x)
    return np.bincount(flat[valid], minlength=f * bins).reshape(f, bins).astype(np.int64)


def proportions(counts: I64 | F64) -> F64:
    total = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1.0), np.nan)


def psi(ref_counts: I64, live_counts: I64, epsilon: float = PSI_EPSILON) -> F64:
    """Population stability index per feature: sum over bins of (live - ref) * ln(live / ref), on
    proportions floored at epsilon. NaN for a feature without samples on either side."""
    p = np.maximum(proportions(ref_counts), epsilon)
    q = np.maximum(proportions(live_counts), epsilon)
    out: F64 = np.sum((q - p) * np.log(q / p), axis=1)
    return out


def js_distance(ref_counts: I64 | F64, live_counts: I64 | F64) -> F64:
    """Jensen-Shannon distance (base 2, so in [0, 1]) per feature between the two histograms."""
    p = proportions(ref_counts)
    q = proportions(live_counts)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    out: F64 = np.sqrt(np.maximum(0.5 * (kl_p + kl_q), 0.0))
    return np.where(np.isnan(p[:, 0]) | np.isnan(q[:, 0]), np.nan, out)  # an empty side has no distribution


def sorted_columns(ref: F64) -> list[F64]:
    """Each column of the reference sorted, NaN removed (the reference side of ks_2samp)."""
    return [np.sort(col[~np.isnan(col)]) for col in ref.T]


def ks_2samp(ref_sorted: list[F64], live: F64) -> tuple[F64, F64]:
    """Two-sample KS statistic per feature (exact, the same as scipy.stats.ks_2samp) and its two-sided
    p-value by Smirnov's asymptotic distribution (scipy's method='asymp').

    The largest gap between the two empirical CDFs is found at live points only: between two consecutive
    live points the live CDF is flat and the reference CDF rises, so the gap is largest at one end (the
    value at the point, or the limit just before the next one). Cost: O(window log window) per feature."""
    n2, f = live.shape
    stat = np.full(f, np.nan)
    n1s = np.array([r.shape[0] for r in ref_sorted], dtype=np.float64)
    if n2 == 0 or f == 0:
        return stat, np.full(f, np.nan)
    xs = np.sort(live.T, axis=1)  # one contiguous row per feature, each sorted; NaN sorts last
    valid = ~np.isnan(xs)
    n2s = valid.sum(axis=1).astype(np.float64)
    # The live CDF at each sorted point, right-continuous (count <= x) and just before it (count < x),
    # from the runs of equal values, for all features at once.
    idx = np.arange(n2, dtype=np.float64)
    new_run = np.ones_like(valid)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    run_end = np.ones_like(valid)
    run_end[:, :-1] = new_run[:, 1:]
    below = np.maximum.accumulate(np.where(new_run, idx, 0.0), axis=1)  # count of live values < x
    upto = np.minimum.accumulate(np.where(run_end, idx + 1, np.inf)[:, ::-1], axis=1)[:, ::-1]  # count <= x
    ref_upto = np.empty_like(xs)
    ref_below = np.empty_like(xs)
    for j, r in enumerate(ref_sorted):
        ref_upto[j] = np.searchsorted(r, xs[j], side="right")
        ref_below[j] = np.searchsorted(r, xs[j], side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.maximum(
            np.abs(ref_upto / n1s[:, None] - upto / n2s[:, None]),
            np.abs(ref_below / n1s[:, None] - below / n2s[:, None]),
        )
    gap = np.where(valid, gap, 0.0)  # NaN (sorted last) takes no part
    ok = (n1s > 0) & (n2s > 0)
    stat[ok] = gap.max(axis=1)[ok]
    return stat, ks_pvalue(stat, n1s, n2s)


def ks_pvalue(stat: F64, n1: F64, n2: F64) -> F64:
    """Two-sided p-value of a two-sample KS statistic, asymptotic: kstwo.sf(d, round(n1 n2 / (n1 + n2)))."""
    from scipy.stats import kstwo

    p = np.full(stat.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        en = np.round(n1 * n2 / (n1 + n2))
    ok = ~np.isnan(stat) & (en >= 1)  # one row on each side has no distribution (scipy: NaN too)
    todo = []
    for i in np.flatnonzero(ok):
        key = (float(stat[i]), float(en[i]))
        hit = _KS_SF.get(key)
        if hit is None:
            todo.append(i)
        else:
            p[i] = hit
    if todo:
        p[todo] = np.clip(kstwo.sf(stat[todo], en[todo]), 0.0, 1.0)
        if len(_KS_SF) + len(todo) > _KS_SF_MAX:
            _KS_SF.clear()
        for i in todo:
            _KS_SF[(float(stat[i]), float(en[i]))] = float(p[i])
    return p


# kstwo.sf costs about 0.1 ms a value (an exact matrix method for small statistics). A full window against
# the same reference has the same sizes every time, and its statistic is a difference of two fractions
# with those denominators, so the same values come back window after window: they are remembered.
_KS_SF: dict[tuple[float, float], float] = {}
_KS_SF_MAX = 50_000


def category_counts(x: F64, categories: list[F64]) -> I64:
    """Counts per category, shape (features, max categories + 1); the last column counts values outside the
    feature's categories ('other'); unused columns of features with fewer categories stay zero. NaN is left out."""
    f = x.shape[1]
    width = max((len(c) for c in categories), default=0) + 1
    out = np.zeros((f, width), dtype=np.int64)
    for j, cats in enumerate(categories):
        col = x[:, j]
        col = col[~np.isnan(col)]
        if len(cats) == 0:
            out[j, -1] = col.shape[0]
            continue
        pos = np.minimum(np.searchsorted(cats, col), len(cats) - 1)
        hit = cats[pos] == col
        out[j, : len(cats)] = np.bincount(pos[hit], minlength=len(cats))
        out[j, -1] = int((~hit).sum())
    return out


def chi_square(ref_counts: I64, live_counts: I64) -> tuple[F64, F64]:
    """Chi-square test of homogeneity per feature on the 2 x categories table (reference, window): statistic
    and p-value, as scipy.stats.chi2_contingency(table, correction=False). Categories empty on both sides
    are left out; fewer than two left, or an empty side, gives NaN."""
    from scipy.special import chdtrc

    obs = np.stack([ref_counts, live_counts], axis=1).astype(np.float64)  # (features, 2, categories)
    col = obs.sum(axis=1, keepdims=True)
    row = obs.sum(axis=2, keepdims=True)
    total = row.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = row * col / total
        terms = np.where(expected > 0, (obs - expected) ** 2 / expected, 0.0)
    stat = terms.sum(axis=(1, 2))
    dof = (col[:, 0, :] > 0).sum(axis=1) - 1
    valid = (dof >= 1) & (row[:, 0, 0] > 0) & (row[:, 1, 0] > 0)
    stat = np.where(valid, stat, np.nan)
    p = np.where(valid, chdtrc(np.maximum(dof, 1), np.where(valid, stat, 0.0)), np.nan)
    return stat, p
