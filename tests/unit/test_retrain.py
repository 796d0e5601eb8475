"""The retraining job's pure parts without Ray: the log/feedback join, the held-out split, the rule, lineage."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.ramp import RampPlan
from contract.repository import Repository
from gateway.feedback import FeedbackItem, FeedbackLog
from gateway.request_log import RequestLogSettings, RequestLogWriter
from gateway.types import RequestRecord, Tensor
from serving import retrain
from serving.examples import fit_classifier, write_classifier
from serving.retrain_data import load_labelled, row_labels, split_held_out

MODEL = "breast_cancer"


def record(
    rid: str,
    t: float,
    x: np.ndarray,
    model: str = MODEL,
    code: str = "OK",
    role: str = "primary",
    name: str = "features",
) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        time=t,
        model=model,
        version="1",
        role=role,
        routing_reason="",
        inputs=(Tensor(name, "FP32", x.astype(np.float32)),),
        outputs=(),
        code=code,
        error="",
        queue_ms=0.0,
        model_ms=0.0,
        total_ms=0.0,
        batch_rows=len(x),
        client="",
        protocol="http",
    )


def write_log(
    root: Path, records: list[RequestRecord], labels: list[tuple[str, Any]], model: str = MODEL, **settings: Any
) -> None:
    async def go() -> None:
        s = RequestLogSettings(dir=root, gateway_id="gw", **settings)
        writer, feedback = RequestLogWriter(s).start(), FeedbackLog(s).start()
        for r in records:
            await writer.append(r)
        for rid, label in labels:  # one at a time: a later submit of the same id is the newer label
            await feedback.submit(model, [FeedbackItem(request_id=rid, label=label)])
        await writer.close()
        await feedback.close()

    asyncio.run(go())


def test_row_labels() -> None:
    assert row_labels(1, 1, 2).tolist() == [1]
    assert row_labels([0, 1.0, 1], 3, 2).tolist() == [0, 1, 1]
    assert row_labels(1, 2, 2) is None  # a single number for a two-row request is ambiguous
    assert row_labels([0, 1], 3, 2) is None
    assert row_labels(2, 1, 2) is None and row_labels(-1, 1, 2) is None and row_labels(0.5, 1, 2) is None


def test_join_keeps_labelled_answered_rows_of_the_model_in_the_window(tmp_path: Path) -> None:
    one = np.arange(4, dtype=np.float32).reshape(1, 4)
    records = [
        record("a", 100.0, one),
        record("b", 101.0, one + 1),
        record("c", 102.0, np.vstack([one + 2, one + 3])),
        record("no-label", 103.0, one),
        record("err", 104.0, one, code="INVALID_ARGUMENT"),
        record("b", 105.0, one + 9, role="shadow"),
        record("other", 106.0, one, model="other"),
        record("late", 500.0, one),
        record("wide", 107.0, np.ones((1, 5))),
        record("bad-label", 108.0, one),
        record("trunc", 109.0, one, name="other_input"),
    ]
    labels = [
        ("a", 0),
        ("b", 0),
        ("b", 1),
        ("c", [1, 0]),
        ("err", 1),
        ("late", 1),
        ("wide", 1),
        ("bad-label", 7),
        ("trunc", 1),
        ("never-logged", 1),
    ]
    write_log(tmp_path, records, labels)
    data = load_labelled(tmp_path, MODEL, "features", 4, 2, since=100.0, until=200.0, max_rows=100)
    assert data.request_ids == ["a", "b", "c", "c"]
    assert data.y.tolist() == [0, 1, 1, 0]  # b: its newest label
    np.testing.assert_array_equal(data.x, np.vstack([one, one + 1, one + 2, one + 3]))
    assert data.times.tolist() == [100.0, 101.0, 102.0, 102.0]
    assert data.scanned == 9 and data.labelled_requests == 3  # "late" and "other" are not counted
    assert data.skipped == {
        "no_label": 1,
        "not_answered": 1,
        "shadow": 1,
        "input_shape": 1,
        "label_unusable": 1,
        "no_input_data": 1,
    }
    window = data.window(100.0, 200.0)
    assert window["first_request_time"] == 100.0 and window["last_request_time"] == 102.0
    assert window["labelled_rows"] == 4 and window["request_records"] == 9
    newest = load_labelled(tmp_path, MODEL, "features", 4, 2, since=100.0, until=200.0, max_rows=2)
    assert newest.request_ids == ["c", "c"]


def test_redacted_inputs_are_skipped(tmp_path: Path) -> None:
    write_log(tmp_path, [record("a", 100.0, np.ones((1, 4)))], [("a", 1)], redact_inputs={"features": "mask"})
    data = load_labelled(tmp_path, MODEL, "features", 4, 2, since=0.0, until=1e12, max_rows=10)
    assert data.rows == 0 and data.skipped == {"no_input_data": 1}


def test_held_out_split_is_stratified_seeded_and_disjoint() -> None:
    y = np.array([0] * 30 + [1] * 70)
    train, test = split_held_out(y, 0.3, seed=7)
    assert sorted([*train, *test]) == list(range(100)) and not set(train) & set(test)
    assert (y[test] == 0).sum() == 9 and (y[test] == 1).sum() == 21
    again = split_held_out(y, 0.3, seed=7)
    assert again[1].tolist() == test.tolist()
    assert split_held_out(y, 0.3, seed=8)[1].tolist() != test.tolist()
    small_train, small_test = split_held_out(np.array([0, 0, 1, 1]), 0.01, seed=0)
    assert len(small_test) == 2 and len(small_train) == 2  # one row of each class at least, on both sides
    with pytest.raises(ValueError, match="class 1 has 1 labelled row"):
        split_held_out(np.array([0, 0, 0, 1]), 0.3, seed=0)


@pytest.mark.parametrize(
    ("new", "parent", "rule", "better", "says"),
    [
        ((0.95, 0.2), (0.90, 0.3), retrain.Rule(0.01), True, "gain +0.0500"),
        ((0.91, 0.2), (0.90, 0.3), retrain.Rule(0.01), True, "gain +0.0100"),
        ((0.905, 0.2), (0.90, 0.3), retrain.Rule(0.01), False, "under min_gain"),
        ((0.95, 0.4), (0.90, 0.3), retrain.Rule(0.01), False, "log-loss 0.4000 is worse"),
        ((0.95, 0.4), (0.90, 0.3), retrain.Rule(0.01, allow_worse_log_loss=True), True, "gain"),
        ((0.90, 0.3), (0.90, 0.3), retrain.Rule(0.0), True, "gain +0.0000"),
        ((0.89, 0.1), (0.90, 0.3), retrain.Rule(0.0), False, "under min_gain"),
    ],
)
def test_rule(
    new: tuple[float, float], parent: tuple[float, float], rule: retrain.Rule, better: bool, says: str
) -> None:
    got, reason = rule.decide({"accuracy": new[0], "log_loss": new[1]}, {"accuracy": parent[0], "log_loss": parent[1]})
    assert got is better and says in reason


def test_evaluate_runs_both_models_through_onnx_runtime(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(200, 3))
    y = (x[:, 0] + 0.1 * x[:, 1] > 0).astype(np.int64)
    model, params = fit_classifier("logistic", x, y, params={"C": 10.0, "hidden": 3})
    assert params == {"C": 10.0}
    good = retrain.evaluate(model, x.astype(np.float32), y)
    flipped = retrain.evaluate(model, x.astype(np.float32), 1 - y)
    assert good["accuracy"] > 0.95 and flipped["accuracy"] < 0.05 and good["log_loss"] < flipped["log_loss"]


def test_register_writes_a_new_version_with_lineage(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    parent = write_classifier(repo, "1", "logistic")
    with np.load(parent.path / "reference.npz") as ref:
        assert ref["labels"].shape == ref["predictions"].shape and set(ref["labels"].tolist()) == {0, 1}
        x, y = ref["inputs"].astype(np.float64), ref["labels"]
    model, params = fit_classifier("logistic", x, y, seed=3)
    report = tmp_path / "report.json"
    report.write_text('{"psi": 0.4}')
    metrics = {"new": {"accuracy": 0.97, "log_loss": 0.1}, "parent": {"accuracy": 0.8, "log_loss": 0.5}}
    window = {"since": 1.0, "until": 2.0, "labelled_rows": 10}
    lineage = retrain.lineage_for(
        parent,
        params,
        3,
        window,
        {"reference": 426, "held_out": 3},
        metrics,
        "recent rows",
        retrain.Rule(0.02),
        "drift_report.json",
        str(report),
    )
    entry = retrain.register(repo, parent, model, lineage, metrics["new"], x, y, report)
    m = entry.manifest
    assert (m.name, m.version, m.metrics) == (MODEL, "2", metrics["new"])
    assert m.inputs == parent.manifest.inputs and m.outputs == parent.manifest.outputs
    lin = json.loads((entry.path / "manifest.json").read_text())["lineage"]
    assert lin["parent_version"] == "1" and lin["params"] == {"kind": "logistic", "seed": 3, "C": 0.05}
    assert lin["data_window"] == window and lin["rows"] == {"reference": 426, "held_out": 3}
    assert lin["evaluation"] == {**metrics, "rule": {"min_gain": 0.02, "allow_worse_log_loss": False}}
    assert lin["held_out"] == "recent rows" and lin["drift_report_source"] == str(report)
    assert (entry.path / lin["drift_report"]).read_text() == '{"psi": 0.4}'
    with np.load(entry.path / "reference.npz") as ref:
        assert ref["inputs"].shape == x.shape and ref["labels"].tolist() == y.tolist()
        assert list(ref["feature_names"]) == list(np.load(parent.path / "reference.npz")["feature_names"])
    assert not (entry.path / "model.onnx").stat().st_mode & stat.S_IWUSR  # immutable
    assert retrain.register(repo, parent, model, lineage, metrics["new"], x, y, None).manifest.version == "3"


class FakeRef:
    def __init__(self, value: Any) -> None:
        self.value = value


class FakeTable:
    """Stands in for the traffic table actor: records start_ramp calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.start_ramp = self

    def remote(self, *args: Any) -> FakeRef:
        self.calls.append(args)
        return FakeRef({"revision": 7})


def test_propose_canary_calls_start_ramp_with_the_plan() -> None:
    table = FakeTable()
    plan = retrain.ramp_plan("3", [5, 50, 100], 60.0, 0.01, None, 100, parent="1")
    answer = retrain.propose_canary(table, MODEL, plan, "retrain", "why", get=lambda ref: ref.value)
    assert answer == {"revision": 7}
    assert table.calls == [
        (
            MODEL,
            {
                "version": "3",
                "steps": [5, 50, 100],
                "every_s": 60.0,
                "max_error_rate": 0.01,
                "max_p99_ms": None,
                "min_requests": 100,
                "base": {"1": 100},
            },
            "retrain",
            "why",
        )
    ]
    RampPlan.parse(plan)  # what the traffic table accepts


def test_a_table_without_ramp_plans_says_so() -> None:
    with pytest.raises(RuntimeError, match="takes no ramp plans"):
        retrain.propose_canary(object(), MODEL, {}, "retrain", "why", get=lambda ref: ref)


def test_cli_errors_exit_2_with_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", MODEL, "--parent-version", "9", "--repository", str(tmp_path), "--log-dir", str(tmp_path)]
    assert retrain.main(args) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "error" and "has no manifest.json" in out["error"]
    with pytest.raises(SystemExit):
        retrain.main([*args, "--ramp-steps", "5,5,100"])
    assert "rising percents" in capsys.readouterr().err


def test_too_little_labelled_data_registers_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(tmp_path / "repo")
    write_classifier(repo, "1", "logistic")
    write_log(tmp_path / "log", [record("a", 1000.0, np.ones((1, 30)))], [("a", 1)])
    code = retrain.main(
        [
            "--model",
            MODEL,
            "--parent-version",
            "1",
            "--repository",
            str(repo.root),
            "--log-dir",
            str(tmp_path / "log"),
            "--until",
            "2000",
            "--no-deploy",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["outcome"] == "skipped" and "1 labelled row(s)" in out["reason"]
    assert repo.versions(MODEL) == ["1"]
