"""The retraining job's pure parts without Ray: the log/feedback join, the held-out split, the rule, lineage."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.repository import Repository
from gateway.feedback import FeedbackItem, FeedbackLog
from gateway.request_log import RequestLogSettings, RequestLogWriter
from gateway.types import RequestRecord, Tensor
from serving import retrain
from serving.examples import fit_classifier, write_classifier
from serving.retrain_data import load_labelled, row_keys, row_labels, split_held_out

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


def test_the_held_out_set_is_the_newest_window_of_inputs_never_trained_on() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    x[7] = x[1]  # a repeat of an input trained on: trained on again, never held out
    x[9] = x[8]  # an input sent twice in the window: held out once, with its newer label
    x[6] = [-0.0, 99.0]  # equal to a reference row (-0.0 is 0.0)
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 8, 9], dtype=np.float64)  # rows 7 and 8 came in one request
    split = split_held_out(x, times, 0.5, reference=np.array([[0.0, 99.0]], np.float32))
    assert split.since == 6.0 and split.window_rows == 5  # round(0.5 * 10) newest rows: times 6 and later
    assert split.train.tolist() == [0, 1, 2, 3, 4, 6, 7] and split.test.tolist() == [5, 9]
    assert (split.seen_in_training, split.repeated) == (2, 1)
    held = split.describe(0.5, np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]), 30)
    assert held["rows"] == 2 and held["classes"] == {"1": 2} and held["since"] == 6.0 and held["min_rows"] == 30
    train_keys = {k for i, k in enumerate(row_keys(x)) if i in set(split.train)}
    assert not train_keys & {row_keys(x)[i] for i in split.test}

    tied = split_held_out(x[:4], np.array([5.0, 5.0, 5.0, 5.0]), 0.3)  # one request: the whole of it is held out
    assert tied.train.tolist() == [] and tied.test.tolist() == [0, 1, 2, 3]
    assert split_held_out(x[:0], times[:0], 0.3).test.tolist() == []
    shuffled = split_held_out(x[::-1], times[::-1], 0.5, reference=np.array([[0.0, 99.0]], np.float32))
    assert sorted(9 - shuffled.test) == split.test.tolist()  # by time, not by position in the arrays


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
    held_out = {"method": "newest rows", "rows": 3}
    lineage = retrain.lineage_for(
        parent,
        params,
        3,
        window,
        {"reference": 426, "held_out": 3},
        metrics,
        held_out,
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
    assert lin["held_out"] == held_out and lin["drift_report_source"] == str(report)
    assert (entry.path / lin["drift_report"]).read_text() == '{"psi": 0.4}'
    with np.load(entry.path / "reference.npz") as ref:
        assert ref["inputs"].shape == x.shape and ref["labels"].tolist() == y.tolist()
        assert list(ref["feature_names"]) == list(np.load(parent.path / "reference.npz")["feature_names"])
    assert not (entry.path / "model.onnx").stat().st_mode & stat.S_IWUSR  # immutable
    assert retrain.register(repo, parent, model, lineage, metrics["new"], x, y, None).manifest.version == "3"


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


def run_job(repo: Repository, log: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    code = retrain.main(
        [
            "--model",
            MODEL,
            "--parent-version",
            "1",
            "--repository",
            str(repo.root),
            "--log-dir",
            str(log),
            "--until",
            "100000",
            "--no-deploy",
            *extra,
        ]
    )
    return code, json.loads(capsys.readouterr().out)


def unseen_rows(repo: Repository) -> tuple[np.ndarray, np.ndarray]:
    """The data set's rows the parent never trained on (those not in its reference), with their true labels."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    with np.load(repo.root / MODEL / "1" / "reference.npz") as ref:
        trained = set(row_keys(ref["inputs"]))
    keep = np.array([k not in trained for k in row_keys(x)])
    return x[keep], data.target[keep]


def test_repeated_inputs_cannot_make_a_worse_model_look_better(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 inputs sent 12 times each with wrong labels, then 60 fresh inputs with true labels. Split per row, most
    of the held-out rows are repeats of rows trained on, so a model that learnt the wrong labels beats its parent
    there (held-out accuracy 0.50 against 0.20) while it is far worse on everything else. Held out by time and
    identity, the repeats are trained on but never judged: the fresh rows decide, and the model is refused."""
    repo = Repository(tmp_path / "repo")
    write_classifier(repo, "1", "logistic")
    x, y = unseen_rows(repo)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(y))
    noisy, fresh = pick[:20], pick[20:80]
    rows = [(int(i), 1 - int(y[i])) for i in np.repeat(noisy, 12)]
    rows = [rows[j] for j in rng.permutation(len(rows))] + [(int(i), int(y[i])) for i in fresh]
    write_log(
        tmp_path / "log",
        [record(f"r{k}", 1000.0 + k, x[i : i + 1]) for k, (i, _) in enumerate(rows)],
        [(f"r{k}", label) for k, (_, label) in enumerate(rows)],
    )

    code, out = run_job(repo, tmp_path / "log", capsys)
    assert code == 0 and out["outcome"] == "not_better" and out["version"] is None, out
    assert repo.versions(MODEL) == ["1"]
    held = out["held_out"]
    assert held["rows"] == out["rows"]["held_out"] == 60  # the fresh inputs, each once
    assert held["window_rows"] == 90 and held["seen_in_training"] == 30 and held["since"] == 1210.0
    assert out["rows"]["logged_train"] == 240  # every repeat is trained on, the 30 in the window too
    assert out["metrics"]["new"]["accuracy"] < out["metrics"]["parent"]["accuracy"]


def test_too_small_a_held_out_set_decides_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Calm traffic: the parent's own training rows sent again. Every one of them was trained on, so nothing is
    left to hold out, and the job says so instead of judging on rows the models have seen."""
    repo = Repository(tmp_path / "repo")
    write_classifier(repo, "1", "logistic")
    with np.load(repo.root / MODEL / "1" / "reference.npz") as ref:
        x, y = ref["inputs"][:100], ref["labels"][:100]
    fresh, fresh_y = unseen_rows(repo)
    x, y = np.concatenate([x, fresh[:10]]), np.concatenate([y, fresh_y[:10]])
    write_log(
        tmp_path / "log",
        [record(f"r{k}", 1000.0 + k, x[k : k + 1]) for k in range(len(y))],
        [(f"r{k}", int(y[k])) for k in range(len(y))],
    )
    code, out = run_job(repo, tmp_path / "log", capsys)
    assert code == 0 and out["outcome"] == "insufficient_held_out" and out["version"] is None, out
    assert out["reason"].startswith("insufficient held-out data: 10 held-out row(s), at least 30 are needed")
    assert out["held_out"]["window_rows"] == 33 and out["held_out"]["seen_in_training"] == 23
    assert "metrics" not in out and repo.versions(MODEL) == ["1"]
    code, out = run_job(repo, tmp_path / "log", capsys, "--min-held-out", "5")
    assert out["outcome"] == "not_better" and out["held_out"]["rows"] == 10 and "metrics" in out, out
