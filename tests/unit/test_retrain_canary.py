"""How the retraining job proposes a better version: a ramp, or an experiment when the model has outcome feedback.

The choice and the plans are pure; the table they go to is the real TrafficTable, driven in-process."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from contract.experiments.plan import ExperimentPlan
from contract.ramp import RampPlan
from contract.repository import Repository
from gateway.drift.jobs import build_entrypoint
from gateway.drift.settings import DEFAULT_ENTRYPOINT, DriftSettings
from gateway.types import Tensor
from serving import canary, retrain
from serving.examples import write_classifier
from serving.retrain_data import load_labelled
from serving.traffic_table import TrafficTable
from tests.unit.test_retrain import MODEL, record, write_log

NOW = 100_000.0
OPTIONS = canary.ExperimentOptions()
RAMP = canary.ramp_plan("3", [5, 25, 50, 100], 300.0, 0.01, None, 100, parent="1")
EXPERIMENT = canary.experiment_plan("3", "1", OPTIONS, 0.01, None, 100)


def choose(mode: canary.Kind, outcomes: int, latest: float | None) -> canary.Proposal:
    return canary.choose(mode, canary.Feedback(outcomes, latest), NOW, RAMP, EXPERIMENT, OPTIONS)


def test_the_experiment_pits_the_new_version_against_the_parent_on_accuracy() -> None:
    plan = ExperimentPlan.parse(EXPERIMENT)  # what the traffic table accepts
    assert plan.arms == {"1": 50, "3": 50} and plan.control == "1" and plan.treatments == ["3"]
    assert plan.metric == "accuracy" and plan.higher_is_better and plan.mde == 0.02
    assert plan.max_samples == 50_000 and plan.max_duration_s == 7 * 24 * 3600.0
    assert plan.max_error_rate == 0.01 and plan.max_p99_ms is None and plan.min_requests == 100
    assert RampPlan.parse(RAMP).version == "3"


def test_an_experiment_only_for_a_model_with_outcome_feedback() -> None:
    chosen = choose("experiment", 290, NOW - 30)
    assert chosen.kind == "experiment" and chosen.plan == EXPERIMENT
    assert (
        chosen.why
        == "an experiment on accuracy: 290 labelled row(s) with a scored answer in the window, newest label 30 s old"
    )
    assert chosen.summary() == {"canary": {"kind": "experiment", "why": chosen.why}, "experiment": EXPERIMENT}

    few = choose("experiment", 99, NOW - 30)
    assert few.kind == "ramp" and few.plan == RAMP
    assert "no outcome feedback" in few.why and "99 labelled row(s) in the window have a logged answer" in few.why
    assert "--experiment-min-outcomes" in few.why

    stale = choose("experiment", 5000, NOW - 2 * 86400)
    assert stale.kind == "ramp" and "newest label is 172800 s old" in stale.why
    assert choose("experiment", 5000, None).kind == "ramp"  # never labelled

    asked = choose("ramp", 5000, NOW)  # the default: a ramp, whatever the feedback
    assert asked.kind == "ramp" and asked.why == "a guarded ramp (--canary ramp)"
    assert asked.summary() == {"canary": {"kind": "ramp", "why": asked.why}, "ramp": RAMP}


def test_flags_make_the_plans(tmp_path: Path) -> None:
    where = ["--model", MODEL, "--parent-version", "1", "--repository", str(tmp_path), "--log-dir", str(tmp_path)]
    a = retrain.parser().parse_args(
        [
            *where,
            *("--canary", "experiment", "--experiment-percent", "20", "--experiment-mde", "0.05", "--until", str(NOW)),
            *("--experiment-max-samples", "3000", "--max-error-rate", "0.02", "--experiment-min-outcomes", "10"),
        ]
    )
    chosen = retrain.choose_canary(a, "3", "1", canary.Feedback(10, NOW))
    assert chosen.kind == "experiment"
    assert chosen.plan["arms"] == {"1": 80, "3": 20} and chosen.plan["mde"] == 0.05
    assert chosen.plan["max_samples"] == 3000 and chosen.plan["max_error_rate"] == 0.02
    assert retrain.choose_canary(a, "3", "1", canary.Feedback(9, NOW)).kind == "ramp"


class Remote:
    """Stands in for the table's actor handle: `handle.method.remote(...)` runs the real table's coroutine."""

    def __init__(self, table: Any, method: str) -> None:
        self.table, self.method = table, method

    def remote(self, *args: Any) -> Any:
        return getattr(self.table, self.method)(*args)


class Handle:
    def __init__(self, table: TrafficTable) -> None:
        self.start_ramp = Remote(table, "start_ramp")
        self.start_experiment = Remote(table, "start_experiment")


async def test_the_table_runs_the_proposal_audited_as_the_job(tmp_path: Path) -> None:
    table = TrafficTable(str(tmp_path / "table.json"))
    await table.set_model(MODEL, {"1": 100}, "op", "")
    calls: list[Any] = []

    def get(coroutine: Any) -> Any:
        calls.append(coroutine)
        return None

    chosen = choose("experiment", 290, NOW)
    canary.propose(Handle(table), MODEL, chosen, retrain.WHO, "retrained from 1: better", get=get)
    answer = await calls[0]
    try:
        assert answer["models"][MODEL] == {"1": 50, "3": 50}
        assert answer["experiments"][MODEL]["state"] == "running"
        last = table.model_history(MODEL)[-1]
        assert last["who"] == "retrain" and last["reason"] == "retrained from 1: better"
        view = canary.table_view(answer, MODEL, "experiment")
        assert view["weights"] == {"1": 50, "3": 50} and view["experiment"]["plan"]["control"] == "1"
        # While it runs, a second job's ramp is refused (the job then exits 3, the version registered).
        canary.propose(Handle(table), MODEL, choose("ramp", 0, None), retrain.WHO, "again", get=get)
        with pytest.raises(Exception, match="running an experiment"):
            await calls[1]
    finally:
        if table._ticker is not None:
            table._ticker.cancel()
            await asyncio.gather(table._ticker, return_exceptions=True)


def test_a_table_without_the_method_says_so() -> None:
    with pytest.raises(RuntimeError, match="takes no experiments"):
        canary.propose(object(), MODEL, choose("experiment", 290, NOW), "retrain", "why", get=lambda ref: ref)
    with pytest.raises(RuntimeError, match="takes no ramp plans"):
        canary.propose(object(), MODEL, choose("ramp", 0, None), "retrain", "why", get=lambda ref: ref)


def test_the_join_counts_rows_an_experiment_could_score(tmp_path: Path) -> None:
    x = np.ones((2, 4), np.float32)
    answered = replace(record("a", 1000.0, x), outputs=(Tensor("label", "INT64", np.array([1, 0])),))
    write_log(tmp_path / "log", [answered, record("b", 1001.0, x)], [("a", [1, 1]), ("b", [0, 0])])
    data = load_labelled(tmp_path / "log", MODEL, "features", 4, 2, 0.0, 2000.0, 100)
    assert data.rows == 4 and data.labelled_requests == 2
    assert data.outcomes == 2  # "b" was logged without its outputs: nothing for an experiment to score
    assert data.latest_label is not None and data.latest_label > 1e9  # labels are stamped when written
    empty = load_labelled(tmp_path / "log", "other", "features", 4, 2, 0.0, 2000.0, 100)
    assert empty.outcomes == 0 and empty.latest_label is None


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [("--experiment-percent", "100", "whole percent from 1 to 99"), ("--experiment-mde", "-1", "mde")],
)
def test_bad_experiment_flags_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, fragment: str
) -> None:
    repo = Repository(tmp_path / "repo")
    write_classifier(repo, "1", "logistic")
    args = ["--model", MODEL, "--parent-version", "1", "--repository", str(repo.root), "--log-dir", str(tmp_path)]
    assert retrain.main([*args, "--canary", "experiment", flag, value]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err + captured.out
    if captured.out:
        assert json.loads(captured.out)["outcome"] == "error"


def test_the_drift_setting_reaches_the_job(tmp_path: Path) -> None:
    settings = DriftSettings(retrain_canary="experiment")
    entry = build_entrypoint(
        settings.retrain_entrypoint,
        model="m",
        version="1",
        window=4,
        repository=tmp_path,
        log_dir=tmp_path,
        report=tmp_path / "r.json",
        canary=settings.retrain_canary,
    )
    assert entry.endswith("--canary experiment") and DriftSettings().retrain_canary == "ramp"
    assert retrain.parser().parse_args(entry.split()[3:]).canary == "experiment"
    with pytest.raises(ValidationError, match="add '--canary \\{canary\\}' to the entrypoint"):
        DriftSettings(retrain_canary="experiment", retrain_entrypoint="my-job --model {model}")
    assert "{canary}" in DEFAULT_ENTRYPOINT
