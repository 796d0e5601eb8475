"""The alarm policy on hand-made scores: thresholds (p-values breach below), min_features, prediction drift,
consecutive windows, min_samples, cooldown by the records' clock."""

from __future__ import annotations

import math

from gateway.drift.policy import PolicyState, breached, judge
from gateway.drift.reference import FeatureScore
from gateway.drift.settings import DriftPolicySettings


def feats(psis: list[float], pred_psi: float = 0.0, ks_p: float = 0.5) -> list[FeatureScore]:
    out = [FeatureScore(f"f{i}", "numeric", {"psi": v, "ks_pvalue": ks_p}, [], []) for i, v in enumerate(psis)]
    return [*out, FeatureScore("probabilities", "prediction", {"psi": pred_psi}, [], [])]


def test_breached_compares_p_values_from_below_and_ignores_nan() -> None:
    thresholds = {"psi": 0.2, "ks_pvalue": 0.01, "chi2_pvalue": 0.01}
    assert breached({"psi": 0.3, "ks_pvalue": 0.001, "chi2_pvalue": math.nan}, thresholds) == ["psi", "ks_pvalue"]
    assert breached({"psi": 0.2, "ks_pvalue": 0.01}, thresholds) == []  # at the threshold is not over it


def test_a_run_of_breaching_windows_raises_one_alarm_then_the_cooldown_holds() -> None:
    policy = DriftPolicySettings(
        thresholds={"psi": 0.2},
        min_features=2,
        consecutive_windows=3,
        min_samples=100,
        cooldown_s=1000,
        prediction_alone=False,
    )
    s = PolicyState()
    hot = feats([0.5, 0.4, 0.0])
    got = [judge(policy, s, hot, 500, w, 100.0 * w).status for w in range(8)]
    assert got == ["breach", "breach", "alarm", "breach", "breach", "cooldown", "cooldown", "cooldown"]
    assert s.alarms == 1 and s.last_alarm_window == 2
    # 1000 s after the alarm (by the records' clock) the held-back run fires.
    assert judge(policy, s, hot, 500, 12, 1200.0).status == "alarm"
    assert s.last_alarm_window == 12 and s.streak == 0


def test_a_quiet_window_breaks_the_run_and_a_small_one_is_not_judged() -> None:
    policy = DriftPolicySettings(thresholds={"psi": 0.2}, min_features=1, consecutive_windows=2, min_samples=100)
    s = PolicyState()
    assert judge(policy, s, feats([0.5]), 500, 0, 0).status == "breach"
    small = judge(policy, s, feats([0.5]), 99, 1, 1)
    assert small.status == "insufficient" and s.streak == 1  # neither breaks nor extends the run
    assert judge(policy, s, feats([0.01]), 500, 2, 2).status == "ok" and s.streak == 0
    assert judge(policy, s, feats([0.5]), 500, 3, 3).status == "breach"
    assert judge(policy, s, feats([0.5]), 500, 4, 4).status == "alarm"


def test_min_features_and_prediction_drift() -> None:
    one = feats([0.5, 0.0, 0.0], pred_psi=0.0)
    pred = feats([0.0, 0.0, 0.0], pred_psi=0.9)
    strict = DriftPolicySettings(thresholds={"psi": 0.2}, min_features=2, consecutive_windows=1, prediction_alone=False)
    assert judge(strict, PolicyState(), one, 1000, 0, 0).status == "ok"
    assert judge(strict, PolicyState(), pred, 1000, 0, 0).status == "ok"
    loose = strict.model_copy(update={"prediction_alone": True})
    v = judge(loose, PolicyState(), pred, 1000, 0, 0)
    assert v.status == "alarm" and v.prediction_breach and v.breaching == []
    ks = DriftPolicySettings(thresholds={"ks_pvalue": 1e-3}, min_features=3, consecutive_windows=1)
    v = judge(ks, PolicyState(), feats([0.0, 0.0, 0.0], ks_p=1e-6), 1000, 0, 0)
    assert v.status == "alarm" and v.breaching == ["f0", "f1", "f2"]
