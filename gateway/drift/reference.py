"""A version's reference profile: its training inputs and predictions from the model repository, binned and
sorted once, and the scoring of a window against it.

The version folder's manifest names the file (`reference`, e.g. reference.npz) holding `inputs` (rows x
features), `predictions` (rows, or rows x k) and optionally `feature_names` and `categorical` (names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.manifest import Manifest
from contract.repository import Repository, RepositoryError
from gateway.drift import stats
from gateway.drift.stats import F64, I64


class ReferenceError(Exception):
    """A version whose reference cannot be used (none, unreadable, or not matching the signature)."""


@dataclass
class NumericBlock:
    """Numeric columns: quantile bins and sorted samples of the reference."""

    names: list[str]
    edges: F64
    ref_counts: I64
    ref_sorted: list[F64]

    @classmethod
    def build(cls, names: list[str], ref: F64, bins: int) -> NumericBlock:
        edges = stats.quantile_edges(ref, bins)
        return cls(names, edges, stats.bin_counts(ref, edges), stats.sorted_columns(ref))


@dataclass
class CategoricalBlock:
    names: list[str]
    categories: list[F64]
    ref_counts: I64

    @classmethod
    def build(cls, names: list[str], ref: F64, max_categories: int) -> CategoricalBlock:
        cats = []
        for col in ref.T:
            values, counts = np.unique(col[~np.isnan(col)], return_counts=True)
            keep = np.sort(values[np.argsort(-counts, kind="stable")[:max_categories]])
            cats.append(keep.astype(np.float64))
        return cls(names, cats, stats.category_counts(ref, cats))


@dataclass
class FeatureScore:
    """One feature's scores in one window, with the histograms behind them (for the report's plot)."""

    feature: str
    kind: str  # numeric | categorical | prediction
    scores: dict[str, float]
    ref_hist: list[int]
    live_hist: list[int]
    edges: list[float] = field(default_factory=list)  # numeric: interior bin edges; categorical: the categories


def _numeric_scores(block: NumericBlock, live: F64, kind: str) -> list[FeatureScore]:
    counts = stats.bin_counts(live, block.edges)
    psi = stats.psi(block.ref_counts, counts)
    js = stats.js_distance(block.ref_counts, counts)
    ks, ks_p = stats.ks_2samp(block.ref_sorted, live)
    out = []
    for j, name in enumerate(block.names):
        finite = block.edges[j][np.isfinite(block.edges[j])]
        nb = finite.shape[0] + 1  # the bins that can hold values (repeated edges made the rest empty)
        out.append(
            FeatureScore(
                name,
                kind,
                {
                    "psi": float(psi[j]),
                    "ks_stat": float(ks[j]),
                    "ks_pvalue": float(ks_p[j]),
                    "js_distance": float(js[j]),
                },
                [int(c) for c in block.ref_counts[j][:nb]],
                [int(c) for c in counts[j][:nb]],
                [float(e) for e in finite],
            )
        )
    return out


def _categorical_scores(block: CategoricalBlock, live: F64) -> list[FeatureScore]:
    counts = stats.category_counts(live, block.categories)
    psi = stats.psi(block.ref_counts, counts)
    js = stats.js_distance(block.ref_counts, counts)
    chi, chi_p = stats.chi_square(block.ref_counts, counts)
    out = []
    for j, name in enumerate(block.names):
        k = len(block.categories[j])
        keep = [*range(k), counts.shape[1] - 1]  # its categories, then 'other'
        out.append(
            FeatureScore(
                name,
                "categorical",
                {
                    "psi": float(psi[j]),
                    "js_distance": float(js[j]),
                    "chi2_stat": float(chi[j]),
                    "chi2_pvalue": float(chi_p[j]),
                },
                [int(block.ref_counts[j][i]) for i in keep],
                [int(counts[j][i]) for i in keep],
                [float(c) for c in block.categories[j]],
            )
        )
    return out


@dataclass
class ReferenceProfile:
    """What a window of (model, version) is compared with. Built once per version."""

    model: str
    version: str
    input_names: list[str]  # input tensors in signature order; their columns are concatenated
    width: int  # feature columns of one row
    feature_names: list[str]
    numeric_idx: list[int]
    categorical_idx: list[int]
    numeric: NumericBlock
    categorical: CategoricalBlock
    prediction_output: str
    prediction_columns: list[int]  # columns of the logged output compared with the reference predictions
    prediction_width: int  # columns of the logged output per row
    prediction: NumericBlock
    reference_rows: int

    def score(self, x: F64, p: F64) -> list[FeatureScore]:
        """Every feature's scores, then the prediction's, for rows x (n, width) and predictions p (n, columns)."""
        out = _numeric_scores(self.numeric, x[:, self.numeric_idx], "numeric") if self.numeric_idx else []
        if self.categorical_idx:
            out += _categorical_scores(self.categorical, x[:, self.categorical_idx])
        if self.prediction_columns and p.shape[0]:
            out += _numeric_scores(self.prediction, p, "prediction")
        return out


def _width(shape: list[int]) -> int | None:
    """Columns per row of a tensor whose first dimension is the batch (None when not fixed)."""
    rest = shape[1:]
    if any(d < 0 for d in rest):
        return None
    return int(np.prod(rest)) if rest else 1


def load_profile(
    repository: Path,
    model: str,
    version: str,
    *,
    bins: int = 10,
    max_rows: int = 100_000,
    max_categories: int = 50,
    categorical: list[str] | None = None,
    prediction_output: str | None = None,
) -> ReferenceProfile:
    """Reads and precomputes a version's reference; ReferenceError says why it cannot be used."""
    try:
        entry = Repository(repository).load(model, version)
    except RepositoryError as exc:
        raise ReferenceError(str(exc)) from None
    manifest: Manifest = entry.manifest
    if not manifest.reference:
        raise ReferenceError(f"{model}/{version}: the manifest names no reference statistics")
    try:
        with np.load(entry.path / manifest.reference, allow_pickle=False) as z:
            ref_x = np.asarray(z["inputs"], dtype=np.float64)
            ref_p = np.asarray(z["predictions"], dtype=np.float64) if "predictions" in z.files else None
            names = [str(n) for n in z["feature_names"]] if "feature_names" in z.files else None
            declared = [str(n) for n in z["categorical"]] if "categorical" in z.files else []
    except (OSError, KeyError, ValueError) as exc:
        raise ReferenceError(f"{model}/{version}: cannot read {manifest.reference}: {exc}") from None
    ref_x = ref_x.reshape(ref_x.shape[0], -1)
    widths = [_width(t.shape) for t in manifest.inputs]
    if any(w is None for w in widths) or sum(w or 0 for w in widths) != ref_x.shape[1]:
        raise ReferenceError(
            f"{model}/{version}: the reference has {ref_x.shape[1]} columns per row, the inputs "
            f"{[t.shape for t in manifest.inputs]} do not have that many fixed columns"
        )
    if ref_x.shape[0] > max_rows:
        pick = np.sort(np.random.default_rng(0).choice(ref_x.shape[0], max_rows, replace=False))
        if ref_p is not None and ref_p.shape[0] == ref_x.shape[0]:
            ref_p = ref_p[pick]
        ref_x = ref_x[pick]
    names = names if names and len(names) == ref_x.shape[1] else [f"{i}" for i in range(ref_x.shape[1])]
    cat_names = set(declared) | set(categorical or [])
    cat_idx = [i for i, n in enumerate(names) if n in cat_names]
    num_idx = [i for i in range(len(names)) if i not in set(cat_idx)]

    out_name = prediction_output or (manifest.outputs[0].name if manifest.outputs else "")
    spec = next((t for t in manifest.outputs if t.name == out_name), None)
    pred_cols: list[int] = []
    pred_width = 0
    ref_pred = np.zeros((0, 0))
    if ref_p is not None and spec is not None and (w := _width(spec.shape)) is not None:
        pred_width = w
        ref_pred = ref_p.reshape(ref_p.shape[0], -1)
        if ref_pred.shape[1] == w:
            pred_cols = list(range(w))
        elif ref_pred.shape[1] == 1 and w == 2:
            pred_cols = [1]  # a binary classifier's reference keeps the positive class's probability
    pred_names = [out_name] if len(pred_cols) == 1 else [f"{out_name}[{c}]" for c in pred_cols]
    return ReferenceProfile(
        model=model,
        version=version,
        input_names=[t.name for t in manifest.inputs],
        width=ref_x.shape[1],
        feature_names=names,
        numeric_idx=num_idx,
        categorical_idx=cat_idx,
        numeric=NumericBlock.build([names[i] for i in num_idx], ref_x[:, num_idx], bins),
        categorical=CategoricalBlock.build([names[i] for i in cat_idx], ref_x[:, cat_idx], max_categories),
        prediction_output=out_name,
        prediction_columns=pred_cols,
        prediction_width=pred_width,
        prediction=NumericBlock.build(
            pred_names if pred_cols else [], ref_pred if pred_cols else np.zeros((0, 0)), bins
        ),
        reference_rows=ref_x.shape[0],
    )
