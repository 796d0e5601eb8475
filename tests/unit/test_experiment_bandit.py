"""Thompson-sampling allocation: shares move toward the better arm, every arm keeps its floor, the always-valid
test still makes the decisions (simulated outcomes, a fake clock), and the table audits each move."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from contract.experiments import bandit
from contract.experiments.experiment import ArmCounts, Experiment
from contract.experiments.plan import ExperimentPlan
from contract.experiments.stats import Moments
from contract.ramp import PlanError
from serving.traffic_table import TrafficTable

PLAN: dict[str, Any] = {
    "arms": {"1": 50, "2": 50},
    "metric": "accuracy",
    "min_samples": 100,
    "max_samples": 200_000,
    "allocation": "thompson",
    "min_share": 10,
}


def test_shares_are_whole_percents_above_the_floor() -> None:
    assert bandit.shares({"1": 0.5, "2": 0.5}, 10) == {"1": 50, "2": 50}
    assert bandit.shares({"1": 0.0, "2": 1.0}, 10) == {"1": 10, "2": 90}
    three = bandit.shares({"1": 0.334, "2": 0.333, "3": 0.333}, 5)
    assert sum(three.values()) == 100 and min(three.values()) >= 5 and three["1"] == 34
    good = {"1": (80, 100), "2": (95, 100)}
    p = bandit.p_best(good, bandit.seed_of("m@1", good))
    assert p == bandit.p_best(good, bandit.seed_of("m@1", good))  # the same evidence, the same shares
    assert p["2"] > 0.99 and sum(p.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"allocation": "greedy"}, "unknown allocation"),
        ({"metric": "mean"}, "right/wrong metric"),
        ({"min_share": 0}, "at least 1"),
        ({"arms": {"1": 40, "2": 30, "3": 30}, "min_share": 34}, "at most 33 for 3 arms"),
    ],
)
def test_bad_thompson_plans_say_what_is_wrong(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PlanError, match=fragment):
        ExperimentPlan.parse({**PLAN, **change})


def simulate(
    rates: dict[str, float], seed: int, batches: int, rows: int = 100
) -> tuple[Experiment, list[dict[str, int]]]:
    """Traffic split by the current shares, one Bernoulli outcome per row, an evaluation after each batch."""
    rng = np.random.default_rng(seed)
    e = Experiment("m", ExperimentPlan.parse({**PLAN, "arms": dict.fromkeys(rates, 100 // len(rates))}), 0.0, None)
    weights, seen = dict(e.plan.arms), []
    counts = {v: Moments() for v in rates}
    for step in range(1, batches + 1):
        arms = list(weights)
        picked = rng.choice(len(arms), size=rows, p=[weights[a] / 100 for a in arms])
        for i, v in enumerate(arms):
            counts[v] = counts[v].add(rng.random(int((picked == i).sum())) < rates[v])
        e.update({v: ArmCounts(primary=m) for v, m in counts.items()}, 0, float(step))
        for d in e.decide(float(step)):
            weights = {d.version: 100} if d.action == "promote" and d.version else e.weights(weights)
        moved = e.allocate(weights)
        if moved is not None:
            weights = moved[0]
        seen.append(dict(weights))
        if not e.running:
            break
    return e, seen


def test_shares_move_toward_the_better_arm_and_the_test_still_decides() -> None:
    e, seen = simulate({"1": 0.80, "2": 0.86}, seed=3, batches=400)
    assert e.state == "promoted" and e.arm_states["2"] == "promoted"
    assert "significantly better than control" in e.outcome  # the always-valid test made the call
    running = seen[:-1]
    assert max(w["2"] for w in running) >= 80  # traffic went to the better arm while it ran ...
    assert min(w["1"] for w in running) >= 10  # ... and control kept its floor, so it kept its data
    assert e._arm("1").primary.n >= e.plan.min_samples
    assert e.lift("2").low > 0
    assert seen[-1] == {"2": 100}


def test_a_worse_arm_loses_traffic_then_is_stopped_by_the_test() -> None:
    e, seen = simulate({"1": 0.86, "2": 0.80}, seed=4, batches=400)
    assert e.state == "stopped" and e.arm_states["2"] == "stopped"
    assert min(w.get("2", 0) for w in seen[:-1]) == 10  # down to the floor before the verdict
    assert seen[-1] == {"1": 100}


def test_with_no_difference_the_test_rarely_calls_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A/A under Thompson allocation, the decision read after every batch: wrong calls stay under alpha."""
    monkeypatch.setattr(bandit, "DRAWS", 1000)  # coarser shares, same decisions: the test reads only counts
    runs = 120
    wrong = sum(simulate({"1": 0.85, "2": 0.85}, seed=100 + k, batches=60)[0].state != "running" for k in range(runs))
    assert wrong <= 0.05 * runs


async def test_the_table_audits_each_move_as_the_experiment(tmp_path: Any) -> None:
    t = TrafficTable(str(tmp_path / "table.json"))
    try:
        await t.start_experiment("m", PLAN, "op", "")
        e = t.experiments["m"]

        def arm(n: int, right: int) -> dict[str, Any]:
            return ArmCounts(Moments(n, right, right), requests=n).to_dict()

        await t.report_outcomes("g1", {"m": {"id": e.id, "arms": {"1": arm(50, 40), "2": arm(50, 45)}}})
        assert t.models["m"] == {"1": 50, "2": 50}  # before min_samples: the planned shares
        await t.report_outcomes("g1", {"m": {"id": e.id, "arms": {"1": arm(150, 120), "2": arm(150, 132)}}})
        last = t.model_history("m")[-1]
        assert last["who"] == "experiment" and last["reason"].startswith("thompson allocation: P(best) 1 0.")
        assert t.models["m"]["2"] > 50 and t.models["m"]["1"] >= 10 and e.running
        assert last["experiment"]["allocation"] == "thompson" and last["experiment"]["arms"]["2"]["p_best"] > 0.5
        revision = t.revision
        t._judge_experiments(e.started + 1)  # the same evidence again: no new revision
        assert t.revision == revision
        back = TrafficTable(str(t.path))  # the posterior shown survives a restart
        assert back.experiments["m"].p_best == e.p_best
    finally:
        if t._ticker is not None:
            t._ticker.cancel()
            await asyncio.gather(t._ticker, return_exceptions=True)


def test_status_shows_the_allocation() -> None:
    from gateway.traffic.experiment_cli import render

    e, _ = simulate({"1": 0.80, "2": 0.86}, seed=3, batches=20)
    text = render(e.public())
    assert "allocation: thompson, at least 10% per arm; P(best) 1 0." in text
