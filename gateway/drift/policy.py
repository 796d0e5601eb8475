"""The alarm policy: which features breach their thresholds, whether a window breaches, and when a run of
breaching windows raises an alarm (with a cooldown). Pure logic; time is the records' own clock."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.drift.reference import FeatureScore
from gateway.drift.settings import LOWER_IS_DRIFT, DriftPolicySettings


@dataclass
class PolicyState:
    """Per (model, version); saved with the checkpoint."""

    streak: int = 0  # breaching windows in a row (judged windows only)
    last_alarm_time: float | None = None
    last_alarm_window: int | None = None
    alarms: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    status: str  # insufficient | ok | breach | alarm | cooldown
    breaching: list[str] = field(default_factory=list)  # input features over a threshold
    prediction_breach: bool = False
    streak: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def breached(scores: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """The statistics of one feature that cross their thresholds (NaN never does)."""
    out = []
    for stat, limit in thresholds.items():
        v = scores.get(stat)
        if v is None or math.isnan(v):
            continue
        if (v < limit) if stat in LOWER_IS_DRIFT else (v > limit):
            out.append(stat)
    return out


def judge(
    policy: DriftPolicySettings,
    state: PolicyState,
    features: list[FeatureScore],
    rows: int,
    window: int,
    end_time: float,
) -> Verdict:
    """The window's verdict; updates state (the streak, and the alarm bookkeeping when it fires)."""
    thresholds: dict[str, float] = {str(k): v for k, v in policy.thresholds.items()}
    if rows < policy.min_samples:
        return Verdict(
            "insufficient",
            streak=state.streak,
            reason=f"{rows} rows, fewer than min_samples {policy.min_samples}: not judged",
        )
    inputs = [f.feature for f in features if f.kind != "prediction" and breached(f.scores, thresholds)]
    pred = any(breached(f.scores, thresholds) for f in features if f.kind == "prediction")
    is_breach = len(inputs) >= policy.min_features or (policy.prediction_alone and pred)
    if not is_breach:
        state.streak = 0
        return Verdict(
            "ok",
            inputs,
            pred,
            0,
            f"{len(inputs)} feature(s) over threshold, fewer than "
            f"min_features {policy.min_features}" + ("" if not pred else "; prediction drifted"),
        )
    state.streak += 1
    what = f"{len(inputs)} feature(s)" + (" and the prediction" if pred else "") + " over threshold"
    if state.streak < policy.consecutive_windows:
        return Verdict(
            "breach",
            inputs,
            pred,
            state.streak,
            f"{what}; {state.streak} of {policy.consecutive_windows} consecutive windows",
        )
    if state.last_alarm_time is not None and end_time - state.last_alarm_time < policy.cooldown_s:
        left = policy.cooldown_s - (end_time - state.last_alarm_time)
        return Verdict(
            "cooldown", inputs, pred, state.streak, f"{what}; alarm held back by the cooldown ({left:.0f} s left)"
        )
    streak = state.streak
    state.streak = 0
    state.last_alarm_time = end_time
    state.last_alarm_window = window
    state.alarms += 1
    return Verdict("alarm", inputs, pred, streak, f"{what} in {streak} consecutive windows")
