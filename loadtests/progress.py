"""Live progress on stderr (tqdm): elapsed time, last-second QPS and p99, errors, late."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from contract.extras import MissingExtra, require


class Progress:
    """Combines per-process snapshots into one bar; a no-op when disabled, or when tqdm is not installed."""

    # A sweep makes a Progress per step: the note that tqdm is missing is printed once per process.
    _missing_said: ClassVar[bool] = False

    def __init__(self, total_s: float, desc: str, enabled: bool = True, warmup_s: float = 0.0) -> None:
        self._warmup_s = warmup_s
        self._latest: dict[int, dict[str, float]] = {}
        self._bar: Any = None
        # No bar when stderr is not a terminal (CI logs): tqdm would print a line per refresh.
        if enabled and sys.stderr.isatty():
            try:
                tqdm = require("tqdm", "progress", "the live progress bar").tqdm
            except MissingExtra as exc:
                # A missing progress bar is no reason to refuse a load test: it runs without one.
                if not Progress._missing_said:
                    Progress._missing_said = True
                    print(f"loadtest: no progress bar: {exc} (or pass --no-progress)", file=sys.stderr)
                return
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
