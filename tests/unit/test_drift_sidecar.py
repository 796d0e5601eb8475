"""The drift sidecar over real request-log files written by the gateway's writer: windows, skips, restarts
and rotation without skipping or double counting, reports, metrics, one alarm and one job (a fake
submitter that behaves like the Ray job server: an id it has seen is refused as existing)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from contract.manifest import Manifest, TensorSpecModel
from contract.repository import Repository
from gateway.drift import reports
from gateway.drift.jobs import RetrainRequest, SubmitError, SubmitResult
from gateway.drift.settings import DriftSettings
from gateway.drift.sidecar import Sidecar
from gateway.request_log.compaction import compact_closed
from loadtests.bench.drift import records_from, write_log
from serving.examples import write_reference

MODEL, WIDTH = "clf", 4
NAMES = ["age", "income", "score", "clicks"]


def make_repository(root: Path, n: int = 5000, seed: int = 0) -> Path:
    """A model `clf` version 1 whose reference is N(0, 1) features and their logistic predictions."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WIDTH))
    manifest = Manifest(
        name=MODEL,
        version="1",
        runtime="array",
        options={"program": "identity"},
        inputs=[TensorSpecModel(name="features", datatype="FP32", shape=[-1, WIDTH])],
        outputs=[
            TensorSpecModel(name="probabilities", datatype="FP32", shape=[-1, 2]),
            TensorSpecModel(name="label", datatype="INT64", shape=[-1]),
        ],
        reference="reference.npz",
    )
    Repository(root).write_version(manifest, lambda d: write_reference(d, x, predict(x), NAMES))
    return root


def predict(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x.sum(axis=1))))


def traffic(n: int, shift: float = 0.0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, WIDTH)) + shift
    return x, predict(x)


class FakeJobServer:
    """Keeps submission ids like the Ray job server: a second submission of an id is refused."""

    def __init__(self, fail: int = 0) -> None:
        self.jobs: dict[str, RetrainRequest] = {}
        self.calls: list[str] = []
        self.fail = fail

    def submit(self, request: RetrainRequest) -> SubmitResult:
        self.calls.append(request.submission_id)
        if self.fail:
            self.fail -= 1
            raise SubmitError("cannot reach the Ray Jobs API (test)")
        if request.submission_id in self.jobs:
            return SubmitResult("exists", request.submission_id)
        self.jobs[request.submission_id] = request
        return SubmitResult("submitted", request.submission_id)


def drift_settings(work: Path, **kw: Any) -> DriftSettings:
    policy = kw.pop("policy", {"min_samples": 400, "consecutive_windows": 2, "min_features": 2, "cooldown_s": 1e9})
    return DriftSettings(
        state_file=work / "state.npz",
        reports_dir=work / "reports",
        window_rows=500,
        plot_interval_s=1e9,
        policy=policy,
        **kw,
    )


def run_all(sidecar: Sidecar) -> None:
    sidecar.run(threading.Event(), once=True)


def window_reports(root: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for p in sorted((root / MODEL / "1").glob("window-*.json")):
        r = orjson.loads(p.read_bytes())
        out[r["window"]] = {
            "rows": r["rows"],
            "first": r["first_time"],
            "last": r["last_time"],
            "verdict": r["verdict"],
            "scores": [f["scores"] for f in r["features"]],
        }
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "repo")


def test_windows_are_numbered_in_log_order_and_skip_what_is_not_live_traffic(tmp_path: Path, repo: Path) -> None:
    x, p = traffic(1200)
    recs = records_from(x, p, model=MODEL)
    errors = records_from(x[:30], p[:30], model=MODEL, code="INTERNAL", prefix="e")
    shadows = records_from(x[:20], p[:20], model=MODEL, role="shadow", prefix="s")
    unknown = records_from(x[:10], p[:10], model="other", prefix="u")
    write_log(tmp_path / "log", recs[:600] + errors + shadows + unknown + recs[600:])
    sidecar = Sidecar(drift_settings(tmp_path), repo, tmp_path / "log")
    run_all(sidecar)
    assert sidecar.counts == {"used": 1200, "not_ok": 30, "shadow": 20, "no_reference": 10}
    got = window_reports(tmp_path / "reports")
    assert sorted(got) == [0, 1] and all(r["rows"] == 500 for r in got.values())
    assert sidecar.windows[(MODEL, "1")].rows == 200 and sidecar.windows[(MODEL, "1")].index == 2
    latest = reports.latest(tmp_path / "reports", MODEL, "1")[0]
    assert latest["window"] == 1 and latest["verdict"]["status"] == "ok"
    names = [f["feature"] for f in latest["features"]]
    assert names == [*NAMES, "probabilities"]
    # Every score is exported, labelled by model, version, feature and statistic.
    value = sidecar.metrics.registry.get_sample_value(
        "gateway_drift_score", {"model": MODEL, "version": "1", "feature": "income", "statistic": "psi"}
    )
    assert value == pytest.approx(latest["features"][1]["scores"]["psi"])


def test_a_request_of_many_rows_is_split_across_windows(tmp_path: Path, repo: Path) -> None:
    x, p = traffic(1400)
    write_log(tmp_path / "log", records_from(x, p, model=MODEL, rows_per_request=7))
    sidecar = Sidecar(drift_settings(tmp_path), repo, tmp_path / "log")
    run_all(sidecar)
    got = window_reports(tmp_path / "reports")
    assert [got[k]["rows"] for k in sorted(got)] == [500, 500]
    assert sidecar.windows[(MODEL, "1")].rows == 400


def test_a_window_closes_early_by_the_records_clock(tmp_path: Path, repo: Path) -> None:
    x, p = traffic(700)
    # 1 s between records: after 300 rows the window is older than max_age_s=299.5 by the records' times.
    write_log(tmp_path / "log", records_from(x, p, model=MODEL, dt=1.0))
    sidecar = Sidecar(drift_settings(tmp_path, max_age_s=299.5), repo, tmp_path / "log")
    run_all(sidecar)
    got = window_reports(tmp_path / "reports")
    assert [got[k]["rows"] for k in sorted(got)] == [300, 300]
    assert got[0]["verdict"]["status"] == "insufficient"  # fewer rows than min_samples (400): not judged


def _shifted_log(root: Path, rotate_bytes: int = 1 << 30, chunk: int = 5000) -> None:
    x0, p0 = traffic(2000, seed=1)
    x1, p1 = traffic(3000, shift=1.5, seed=2)
    write_log(
        root,
        records_from(np.concatenate([x0, x1]), np.concatenate([p0, p1]), model=MODEL),
        rotate_bytes=rotate_bytes,
        chunk=chunk,
    )


def test_restart_rotation_and_compaction_neither_skip_nor_double_count(tmp_path: Path, repo: Path) -> None:
    _shifted_log(tmp_path / "log", rotate_bytes=64 * 1024, chunk=100)
    assert len(list((tmp_path / "log").rglob("segment-*.jsonl"))) > 5
    one = tmp_path / "one"
    run_all(Sidecar(drift_settings(one), repo, tmp_path / "log", FakeJobServer()))
    want = window_reports(one / "reports")
    assert sorted(want) == list(range(10))

    # Stopped and restarted many times, with closed segments compacted to Parquet in between.
    two = tmp_path / "two"
    server = FakeJobServer()
    total = 0
    for i in range(40):
        s = Sidecar(drift_settings(two, poll_max_records=137), repo, tmp_path / "log", server)
        n = s.poll_once()
        total += n
        s.commit()
        if i == 5:
            compact_closed(tmp_path / "log")
        if n == 0:
            break
    assert total == 5000
    assert window_reports(two / "reports") == want
    assert list(server.jobs) == ["retrain-clf-1-w5"]


def test_a_crash_before_the_checkpoint_replays_without_a_second_alarm_or_job(tmp_path: Path, repo: Path) -> None:
    _shifted_log(tmp_path / "log")
    server = FakeJobServer()
    s = Sidecar(drift_settings(tmp_path, poll_max_records=1000), repo, tmp_path / "log", server)
    for _ in range(2):
        s.poll_once()
    s.commit()  # 2000 rows: windows 0-3, no drift yet
    for _ in range(3):
        s.poll_once()  # the alarm (window 5) and its job happen here; then the process dies without a checkpoint
    assert server.calls == ["retrain-clf-1-w5"]
    replay = Sidecar(drift_settings(tmp_path, poll_max_records=1000), repo, tmp_path / "log", server)
    run_all(replay)
    assert server.calls == ["retrain-clf-1-w5", "retrain-clf-1-w5"]
    assert list(server.jobs) == ["retrain-clf-1-w5"]
    lines = list(reports.read_alarms(tmp_path / "reports"))
    assert [a["submission_id"] for a in lines if a["event"] == "alarm"] == ["retrain-clf-1-w5"]
    assert [a["outcome"] for a in lines if a["event"] == "job"] == ["submitted", "exists"]


def test_shifted_traffic_raises_one_alarm_and_one_job_and_a_second_sidecar_starts_none(
    tmp_path: Path, repo: Path
) -> None:
    _shifted_log(tmp_path / "log")
    server = FakeJobServer()
    first = Sidecar(drift_settings(tmp_path / "a"), repo, tmp_path / "log", server)
    run_all(first)
    got = window_reports(tmp_path / "a" / "reports")
    statuses = [got[k]["verdict"]["status"] for k in sorted(got)]
    # Windows 0-3 hold unshifted rows; 4 is the first shifted one, 5 the second in a row: the alarm. The run
    # starts again after it; from window 7 on it is long enough again, but the cooldown holds the alarm back.
    assert statuses == ["ok"] * 4 + ["breach", "alarm", "breach"] + ["cooldown"] * 3
    assert list(server.jobs) == ["retrain-clf-1-w5"]
    job = server.jobs["retrain-clf-1-w5"]
    report = reports.report_path(tmp_path / "a" / "reports", MODEL, "1", 5)
    assert job.entrypoint.startswith("python -m serving.retrain --model clf --parent-version 1 --repository ")
    assert job.entrypoint.endswith(f"--drift-report {report.resolve()} --canary ramp")
    assert orjson.loads(report.read_bytes())["alarm"] == {"submission_id": "retrain-clf-1-w5"}
    assert report.with_suffix(".png").stat().st_size > 1000  # the alarm's window always gets its plot

    second = Sidecar(drift_settings(tmp_path / "b"), repo, tmp_path / "log", server)
    run_all(second)
    assert list(server.jobs) == ["retrain-clf-1-w5"]
    assert [o["outcome"] for o in reports.read_alarms(tmp_path / "b" / "reports") if o["event"] == "job"] == ["exists"]
    assert first.metrics.registry.get_sample_value("gateway_drift_alarms_total", {"model": MODEL, "version": "1"}) == 1


def test_an_unreachable_cluster_is_tried_again_after_a_restart(tmp_path: Path, repo: Path, clock: Any) -> None:
    _shifted_log(tmp_path / "log")
    server = FakeJobServer(fail=2)
    s = Sidecar(drift_settings(tmp_path, submit_retry_s=30), repo, tmp_path / "log", server, clock=clock)
    run_all(s)
    assert server.jobs == {} and len(s.pending) == 1
    again = Sidecar(drift_settings(tmp_path, submit_retry_s=30), repo, tmp_path / "log", server, clock=clock)
    assert len(again.pending) == 1  # kept in the checkpoint
    clock.advance(31)
    again.poll_once()  # nothing new to read; the pending job is retried (and fails once more)
    assert server.jobs == {}
    clock.advance(31)
    again.poll_once()
    assert list(server.jobs) == ["retrain-clf-1-w5"] and again.pending == []
    # Two failed tries, one "failed" line: retries of a waiting job do not grow the alarms file.
    outcomes = [a["outcome"] for a in reports.read_alarms(tmp_path / "reports") if a["event"] == "job"]
    assert outcomes == ["failed", "submitted"]


def test_reports_keep_a_bounded_history(tmp_path: Path, repo: Path) -> None:
    x, p = traffic(3000)
    write_log(tmp_path / "log", records_from(x, p, model=MODEL))
    run_all(Sidecar(drift_settings(tmp_path, keep_reports=2), repo, tmp_path / "log"))
    names = sorted(p.name for p in (tmp_path / "reports" / MODEL / "1").iterdir())
    assert names == ["latest.json", "window-00000004.json", "window-00000005.json"]


def test_the_sidecar_does_not_import_the_data_plane() -> None:
    code = (
        "import sys, gateway.drift.sidecar, gateway.drift.cli; "
        "bad = [m for m in ('gateway.core', 'gateway.app', 'gateway.dispatch', 'gateway.plane.batching', "
        "'gateway.doors.grpc', 'gateway.doors.http', 'ray') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_a_categorical_feature_is_compared_by_chi_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, WIDTH))
    x[:, 3] = rng.choice([0.0, 1.0, 2.0, 3.0], size=4000, p=[0.4, 0.3, 0.2, 0.1])
    manifest = Manifest(
        name=MODEL,
        version="1",
        runtime="array",
        options={"program": "identity"},
        inputs=[TensorSpecModel(name="features", datatype="FP32", shape=[-1, WIDTH])],
        outputs=[TensorSpecModel(name="probabilities", datatype="FP32", shape=[-1, 2])],
        reference="reference.npz",
    )
    Repository(tmp_path / "repo").write_version(manifest, lambda d: write_reference(d, x, predict(x), NAMES))
    live = rng.normal(size=(1000, WIDTH))
    live[:500, 3] = rng.choice([0.0, 1.0, 2.0, 3.0], size=500, p=[0.4, 0.3, 0.2, 0.1])
    live[500:, 3] = rng.choice([0.0, 1.0, 2.0, 3.0, 7.0], size=500, p=[0.1, 0.2, 0.2, 0.3, 0.2])
    write_log(tmp_path / "log", records_from(live, predict(live), model=MODEL))
    settings = drift_settings(
        tmp_path,
        categorical_features={MODEL: ["clicks"]},
        policy={
            "min_samples": 400,
            "min_features": 1,
            "consecutive_windows": 1,
            "thresholds": {"chi2_pvalue": 0.001},
            "prediction_alone": False,
        },
    )
    run_all(Sidecar(settings, tmp_path / "repo", tmp_path / "log"))
    got = window_reports(tmp_path / "reports")
    assert [got[k]["verdict"]["status"] for k in sorted(got)] == ["ok", "alarm"]
    assert got[1]["verdict"]["breaching"] == ["clicks"]
    report = orjson.loads(reports.report_path(tmp_path / "reports", MODEL, "1", 1).read_bytes())
    clicks = next(f for f in report["features"] if f["feature"] == "clicks")
    assert clicks["kind"] == "categorical" and set(clicks["scores"]) == {
        "psi",
        "js_distance",
        "chi2_stat",
        "chi2_pvalue",
    }
    assert clicks["edges"] == [0.0, 1.0, 2.0, 3.0] and clicks["live_hist"][-1] > 50  # 7.0 counts as 'other'
    assert clicks["scores"]["chi2_pvalue"] < 1e-6


def test_without_matplotlib_the_reports_have_no_plot_and_say_so_once(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    x, p = traffic(1500)
    write_log(tmp_path / "log", records_from(x, p, model=MODEL))
    settings = DriftSettings(
        state_file=tmp_path / "state.npz", reports_dir=tmp_path / "reports", window_rows=500, plot_interval_s=0.0
    )  # every window is due a plot
    with caplog.at_level("WARNING", logger="gateway.drift"):
        run_all(Sidecar(settings, repo, tmp_path / "log"))
    got = window_reports(tmp_path / "reports")
    assert sorted(got) == [0, 1, 2]
    assert reports.latest(tmp_path / "reports", MODEL, "1")[0]["plot"] is None
    assert not list((tmp_path / "reports").rglob("*.png"))
    said = [r.getMessage() for r in caplog.records if "plot" in r.getMessage()]
    assert said == [
        "drift: reports without plots: drawing drift reports needs matplotlib: pip install 'model-gateway[plots]'"
    ]
