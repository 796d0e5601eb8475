"""Drift reports and the alarm record on disk.

<reports_dir>/<model>/<version>/window-<n>.json (every score, sample sizes, the verdict) and, for some
windows, window-<n>.png (reference vs live histograms of the most drifted features); latest.json is a
copy of the newest report; the oldest reports beyond `keep` are deleted. <reports_dir>/alarms.jsonl has
one line per alarm and per job submission outcome.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from contract.extras import require
from gateway.drift.reference import FeatureScore

ALARMS = "alarms.jsonl"
LATEST = "latest.json"


def version_dir(root: Path, model: str, version: str) -> Path:
    return root / model / version


def report_path(root: Path, model: str, version: str, window: int) -> Path:
    return version_dir(root, model, version) / f"window-{window:08d}.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (a temp file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two sidecars never share one
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_report(root: Path, report: dict[str, Any], keep: int) -> Path:
    """Writes the window's JSON report and latest.json; prunes old reports. Returns the report's path."""
    path = report_path(root, report["model"], report["version"], report["window"])
    # orjson writes NaN (a statistic that could not be computed) as null.
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    write_atomic(path, data)
    write_atomic(path.parent / LATEST, data)
    _prune(path.parent, keep)
    return path


def _prune(folder: Path, keep: int) -> None:
    reports = sorted(folder.glob("window-*.json"))
    for old in reports[:-keep]:
        for p in (old, old.with_suffix(".png")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def latest(root: Path, model: str, version: str | None = None) -> list[dict[str, Any]]:
    """The newest report of each version of a model (or of one version)."""
    base = root / model
    folders = [base / version] if version is not None else sorted(p for p in base.glob("*") if p.is_dir())
    out = []
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            out.append(orjson.loads((folder / LATEST).read_bytes()))
    return out


def all_latest(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if root.is_dir():
        for model in sorted(p.name for p in root.iterdir() if p.is_dir()):
            out += latest(root, model)
    return out


def append_alarm(root: Path, entry: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ALARMS, "ab") as f:
        f.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        f.flush()
        os.fsync(f.fileno())


def read_alarms(root: Path) -> Iterator[dict[str, Any]]:
    try:
        f = open(root / ALARMS, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line.endswith(b"\n"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    yield orjson.loads(line)


def plot_window(path: Path, report: dict[str, Any], features: list[FeatureScore], top: int) -> None:
    """PNG of reference vs live bin proportions for the `top` features with the highest PSI."""
    matplotlib = require("matplotlib", "plots", "drawing drift reports")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ranked = sorted(
        (f for f in features if not math.isnan(f.scores.get("psi", math.nan))), key=lambda f: -f.scores["psi"]
    )[:top]
    if not ranked:
        return
    cols = min(3, len(ranked))
    rows = (len(ranked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, f in zip(axes.ravel(), ranked, strict=False):
        ref = np.asarray(f.ref_hist, dtype=float)
        live = np.asarray(f.live_hist, dtype=float)
        ref = ref / ref.sum() if ref.sum() else ref
        live = live / live.sum() if live.sum() else live
        pos = np.arange(len(ref))
        ax.bar(pos - 0.2, ref, width=0.4, label="reference", color="tab:blue")
        ax.bar(pos + 0.2, live, width=0.4, label="live", color="tab:orange")
        if f.kind == "categorical":
            labels = [f"{c:g}" for c in f.edges] + ["other"]
        else:
            labels = [f"<{e:.3g}" for e in f.edges] + ([f">={f.edges[-1]:.3g}"] if f.edges else ["all"])
        ax.set_xticks(pos, labels[: len(pos)], rotation=60, fontsize=7)
        mark = " (breach)" if f.feature in report["verdict"]["breaching"] else ""
        ax.set_title(f"{f.feature}{mark}\nPSI {f.scores['psi']:.3f}", fontsize=9)
        ax.set_ylabel("share of rows", fontsize=8)
    for ax in axes.ravel()[len(ranked) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"{report['model']} v{report['version']} window {report['window']}: {report['rows']} rows, "
        f"{report['verdict']['status']}",
        fontsize=11,
    )
    # Fixed margins: tight_layout measures every label and would double the cost of a plot.
    fig.subplots_adjust(
        left=0.07,
        right=0.98,
        top=0.86 if rows == 1 else 0.9,
        bottom=0.22 if rows == 1 else 0.12,
        hspace=0.9,
        wspace=0.3,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
