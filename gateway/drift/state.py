"""The sidecar's checkpoint: the tailer's positions, the open windows (with their rows), the policy state
and unsubmitted jobs, in one file replaced atomically. Because the positions and the windows they fed
are saved together, a restart neither skips nor double counts a row.

Format: an .npz with `meta` (UTF-8 JSON as bytes) and, for open window i, arrays `x<i>` and `p<i>` (float64).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

STATE_VERSION = 1


@dataclass
class SavedState:
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)  # meta plus "x", "p" as arrays
    policy: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def save(path: Path, state: SavedState) -> None:
    arrays: dict[str, Any] = {}
    windows = []
    for i, w in enumerate(state.windows):
        arrays[f"x{i}"] = np.asarray(w["x"], dtype=np.float64)
        arrays[f"p{i}"] = np.asarray(w["p"], dtype=np.float64)
        windows.append({k: v for k, v in w.items() if k not in ("x", "p")})
    meta = {
        "version": STATE_VERSION,
        "positions": state.positions,
        "windows": windows,
        "policy": state.policy,
        "pending": state.pending,
        "counts": state.counts,
    }
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself survives a machine crash once the folder is synced
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: Path) -> SavedState:
    """The saved state, or an empty one when there is no file yet; ValueError for a file this code cannot read."""
    if not path.exists():
        return SavedState()
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = orjson.loads(z["meta"].tobytes())
            if meta.get("version") != STATE_VERSION:
                raise ValueError(f"{path}: unknown drift state version {meta.get('version')!r}")
            windows = [{**w, "x": z[f"x{i}"], "p": z[f"p{i}"]} for i, w in enumerate(meta["windows"])]
    except (OSError, KeyError, zipfile.BadZipFile, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the drift checkpoint ({exc}); move it away to start over") from None
    return SavedState(meta["positions"], windows, meta["policy"], meta["pending"], meta.get("counts", {}))
