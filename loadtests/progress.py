"""Live progress on stderr (tqdm): elapsed time, last-second QPS and p99, errors, late."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Combines per-process snapshots into one bar; a no-op when disabled."""

    def __init__(self, total_s: float, desc: str, enabled: bool = True, warmup_s: float = 0.0) -> None:
        self._warmup_s = warmup_s
        self._latest: dict[int, dict[str, float]] = {}
        self._bar: Any = None
        # No bar when stderr is not a terminal (CI logs): tqdm would print a line per refresh.
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=round(total_s, 1),
                desc=desc,
                unit="s",
                file=sys.stderr,
                leave=True,
                bar_format="{desc} |{bar:20}| {n:.1f}/{total:.0f}s{postfix}",
                dynamic_ncols=True,
            )

    def update(self, snapshot: dict[str, float], process: int = 0) -> None:
        if self._bar is None:
            return
        self._latest[process] = snapshot
        snaps = list(self._latest.values())
        total = {k: sum(s[k] for s in snaps) for k in ("sent", "errors", "late", "qps", "inflight")}
        # Percentiles do not add up across processes: show the worst one.
        p99 = max(s["p99_ms"] for s in snaps)
        elapsed = max(s["elapsed_s"] for s in snaps)
        self._bar.n = min(round(elapsed, 1), self._bar.total)
        if elapsed < self._warmup_s:
            self._bar.set_postfix_str("warming up", refresh=True)
            return
        self._bar.set_postfix_str(
            f"qps={total['qps']:.0f} p99={p99:.1f}ms sent={total['sent']:.0f} "
            f"err={total['errors']:.0f} late={total['late']:.0f} "
            f"inflight={total['inflight']:.0f}",
            refresh=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
