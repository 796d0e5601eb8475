"""`gateway drift run|status|report` with the gateway's settings file, over a real log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.cli import main
from loadtests.bench.drift import records_from, write_log
from tests.unit.test_drift_sidecar import MODEL, make_repository, traffic


@pytest.fixture
def config(tmp_path: Path) -> Path:
    make_repository(tmp_path / "repo")
    x0, p0 = traffic(1000, seed=1)
    x1, p1 = traffic(1000, shift=2.0, seed=2)
    write_log(tmp_path / "log", records_from(np.concatenate([x0, x1]), np.concatenate([p0, p1]), model=MODEL))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "repository": str(tmp_path / "repo"),
                "request_log": {"dir": str(tmp_path / "log")},
                "drift": {
                    "state_file": str(tmp_path / "drift" / "state.npz"),
                    "reports_dir": str(tmp_path / "drift"),
                    "window_rows": 500,
                    "policy": {"min_samples": 400, "consecutive_windows": 2},
                },
            }
        )
    )
    return cfg


def test_run_once_then_status_and_report(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drift", "run", "--config", str(config), "--once", "--no-metrics", "--no-retrain"]) == 0
    err = capsys.readouterr().err
    assert "drift sidecar stopped: 2000 records" in err and "4 windows, 1 alarms, 0 jobs" in err

    assert main(["drift", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(MODEL))
    assert row.split()[:6] == [MODEL, "1", "3", "500", "alarm", "2"]  # windows 2 and 3 hold shifted rows
    assert "age psi=" in row
    assert "alarms: 1" in out and "retrain-clf-1-w3  no job" in out  # --no-retrain

    assert main(["drift", "report", MODEL, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("clf version 1  window 3  500 rows (reference 5000)")
    assert "verdict: alarm: 4 feature(s) and the prediction over threshold in 2 consecutive windows" in out
    assert "alarm: retraining job retrain-clf-1-w3" in out
    report = config.parent / "drift" / MODEL / "1" / "window-00000003.json"
    assert f"report {report}" in out
    assert f"plot   {report.with_suffix('.png')}" in out


def test_report_of_an_unknown_model_says_so(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drift", "report", "nope", "--config", str(config)]) == 1
    assert "no report for nope" in capsys.readouterr().err


def test_a_bad_setting_is_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.write_text(config.read_text() + "\n")
    text = yaml.safe_load(config.read_text())
    text["drift"]["policy"]["thresholds"] = {"psi_typo": 0.2}
    config.write_text(yaml.safe_dump(text))
    assert main(["drift", "status", "--config", str(config)]) == 2
    assert "drift.policy.thresholds.psi_typo" in capsys.readouterr().err


# A stand-in for the sidecar: asks to end with its parent, then records the SIGTERM that asks it to.
_CHILD = """
import signal, sys, time
from pathlib import Path
from gateway.drift.cli import _ends_with_parent
signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[2]).write_text("SIGTERM"), sys.exit(0)))
if not _ends_with_parent(int(sys.argv[1])):
    Path(sys.argv[2]).write_text("parent gone")
    sys.exit(0)
Path(sys.argv[2] + ".ready").write_text("")
time.sleep(60)
"""
_PARENT = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]], start_new_session=True)
time.sleep(60)
"""


def test_the_sidecar_ends_when_the_gateway_is_killed(tmp_path: Path) -> None:
    """`gateway serve` spawns the sidecar with --parent-pid (no preexec_fn, so no fork of a threaded process);
    the sidecar itself asks for SIGTERM when the gateway dies, even by SIGKILL."""
    marker = tmp_path / "child"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _CHILD, str(marker)], env=env)
    with parent:
        try:
            deadline = time.monotonic() + 30
            while not Path(f"{marker}.ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists() and marker.read_text() == "SIGTERM"
        finally:
            parent.kill()


def test_a_sidecar_whose_gateway_is_already_gone_exits(tmp_path: Path) -> None:
    marker = tmp_path / "child"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(os.getpid() + 1_000_000), str(marker)], env=env, check=True, timeout=30
    )
    assert marker.read_text() == "parent gone"
