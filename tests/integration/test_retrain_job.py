"""The retraining entrypoint as a real subprocess: a drifted, labelled log yields a better version with lineage;
a log from the training distribution (most of it the parent's own training rows) yields none. (Deploying and
the canary are switched off here; the summary still says how the version would be proposed.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.repository import Repository
from gateway.feedback import FeedbackItem, FeedbackLog
from gateway.request_log import RequestLogSettings, RequestLogWriter
from gateway.types import RequestRecord, Tensor
from serving.examples import CLASSIFIER, ensure_examples

ROWS = 300


def drifted(factor: float) -> tuple[np.ndarray, np.ndarray]:
    """300 labelled rows of the data set; the ten 'mean' features read `factor` times larger (a recalibrated device)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    idx = np.random.default_rng(1).permutation(len(data.target))[:ROWS]
    x = data.data[idx].copy()
    x[:, :10] *= factor
    return x.astype(np.float32), data.target[idx]


def write_log(root: Path, x: np.ndarray, y: np.ndarray, now: float, answers: np.ndarray | None = None) -> None:
    """One request record per row (some of two rows), then the labels posted back in batches, as clients would.
    With `answers` (the predicted class per row) the records hold the answer, as the gateway logs it."""

    async def go() -> None:
        settings = RequestLogSettings(dir=root, gateway_id="gw-test")
        writer, feedback = RequestLogWriter(settings).start(), FeedbackLog(settings).start()
        items = []
        i = 0
        while i < len(x):
            n = 2 if i % 10 == 0 else 1
            rid = f"req-{i}"
            await writer.append(
                RequestRecord(
                    request_id=rid,
                    time=now - 3600 + i,
                    model=CLASSIFIER,
                    version="1",
                    role="primary",
                    routing_reason="newest ready version",
                    inputs=(Tensor("features", "FP32", x[i : i + n]),),
                    outputs=() if answers is None else (Tensor("label", "INT64", answers[i : i + n]),),
                    code="OK",
                    error="",
                    queue_ms=0.1,
                    model_ms=1.0,
                    total_ms=1.5,
                    batch_rows=n,
                    client="",
                    protocol="http",
                )
            )
            items.append(FeedbackItem(request_id=rid, label=[int(v) for v in y[i : i + n]] if n > 1 else int(y[i])))
            i += n
        for start in range(0, len(items), 100):
            await feedback.submit(CLASSIFIER, items[start : start + 100])
        await writer.close()
        await feedback.close()

    asyncio.run(go())


def run_job(repo: Path, log: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    cmd = [
        sys.executable,
        "-m",
        "serving.retrain",
        "--model",
        CLASSIFIER,
        "--parent-version",
        "1",
        "--repository",
        str(repo),
        "--log-dir",
        str(log),
        "--no-deploy",
        *extra,
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrain") / "repository"
    ensure_examples(root)
    return root


def copy_repo(template: Path, to: Path) -> Repository:
    import shutil

    shutil.copytree(template, to)
    return Repository(to)


def test_a_drifted_world_gets_a_better_version_with_lineage(template: Path, tmp_path: Path) -> None:
    repo = copy_repo(template, tmp_path / "repo")
    x, y = drifted(2.0)
    from serving.examples import predict_proba

    answers = predict_proba(template / CLASSIFIER / "1" / "model.onnx", x).argmax(1).astype(np.int64)
    write_log(tmp_path / "log", x, y, time.time(), answers)
    report = tmp_path / "drift-report-breast_cancer-1.json"
    report.write_text(json.dumps({"model": CLASSIFIER, "version": "1", "psi": {"mean radius": 3.2}}))

    code, out, err = run_job(repo.root, tmp_path / "log", "--drift-report", str(report), "--canary", "experiment")
    assert code == 0, err
    assert out["outcome"] == "registered" and out["version"] == "3" and out["deployed"] is False, out
    assert "reading request log" in err and "training a logistic model" in err  # progress on stderr
    # Labels came back and join to logged answers: the version would go to an experiment against its parent.
    assert out["canary"]["kind"] == "experiment" and "300 labelled row(s) with a scored answer" in out["canary"]["why"]
    assert out["experiment"]["arms"] == {"1": 50, "3": 50} and out["experiment"]["control"] == "1"
    assert out["experiment"]["metric"] == "accuracy" and "ramp" not in out
    new, parent = out["metrics"]["new"], out["metrics"]["parent"]
    assert new["accuracy"] >= parent["accuracy"] + 0.01 and new["log_loss"] <= parent["log_loss"]

    assert repo.versions(CLASSIFIER) == ["1", "2", "3"]
    entry = repo.load(CLASSIFIER, "3")
    lineage = json.loads((entry.path / "manifest.json").read_text())["lineage"]
    assert lineage["parent_version"] == "1" and lineage["params"]["kind"] == "logistic"
    window = lineage["data_window"]
    assert window["request_records"] == window["labelled_requests"] == 270  # every tenth request has two rows
    assert window["labelled_rows"] == ROWS and window["skipped_requests"] == {}
    assert window["first_request_time"] < window["last_request_time"] <= window["until"]
    assert lineage["rows"] == {"reference": 426, "logged_train": 210, "train": 636, "held_out": 90}
    held = lineage["held_out"]  # the newest 90 rows, none of them trained on
    assert held["rows"] == held["window_rows"] == 90 and held["seen_in_training"] == held["repeated"] == 0
    assert held["since"] == window["last_request_time"] - 89 and out["held_out"] == held
    assert lineage["evaluation"]["new"] == new and lineage["evaluation"]["parent"] == parent
    assert json.loads((entry.path / lineage["drift_report"]).read_text())["psi"] == {"mean radius": 3.2}
    assert lineage["drift_report_source"] == str(report.resolve())
    assert entry.manifest.metrics == new
    with np.load(entry.path / "reference.npz") as ref:  # reference statistics of its own training data
        assert ref["inputs"].shape == (636, 30) and ref["labels"].shape == (636,) and ref["predictions"].shape == (636,)

    # The new version answers the drifted world better than its parent, run directly with ONNX Runtime.
    acc = {
        v: float(np.mean(predict_proba(repo.root / CLASSIFIER / v / "model.onnx", x).argmax(1) == y))
        for v in ("1", "3")
    }
    assert acc["3"] > acc["1"]


def test_the_training_distribution_gets_no_new_version(template: Path, tmp_path: Path) -> None:
    repo = copy_repo(template, tmp_path / "repo")
    x, y = drifted(1.0)
    write_log(tmp_path / "log", x, y, time.time())
    code, out, err = run_job(repo.root, tmp_path / "log")
    assert code == 0, err
    # Most of these rows are the parent's own training rows: they are trained on, never judged on, and what is
    # left is too little to decide on.
    assert out["outcome"] == "insufficient_held_out" and out["version"] is None, out
    held = out["held_out"]
    assert held["window_rows"] == 90 and held["seen_in_training"] > 45 and held["rows"] < 30
    assert out["reason"].startswith(f"insufficient held-out data: {held['rows']} held-out row(s)")
    assert repo.versions(CLASSIFIER) == ["1", "2"]
    assert not [p for p in (repo.root / CLASSIFIER).iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_window_without_the_drifted_requests_trains_nothing(template: Path, tmp_path: Path) -> None:
    repo = copy_repo(template, tmp_path / "repo")
    x, y = drifted(2.0)
    write_log(tmp_path / "log", x, y, time.time() - 7200)  # all two hours old
    code, out, _ = run_job(repo.root, tmp_path / "log", "--window-s", "600")
    assert code == 0 and out["outcome"] == "skipped" and "0 labelled row(s)" in out["reason"], out
    assert repo.versions(CLASSIFIER) == ["1", "2"]
