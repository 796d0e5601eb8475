"""Retraining jobs on a real Ray cluster with its job server: one `ray start --head --block` with the
dashboard, started by this module in its own process group and killed at the end (never `ray stop`).

The gateway's embedded Ray runs without the dashboard, so it has no Jobs API; this cluster does. A cluster
started by `ray start` has token authentication on; the submitter sends the local token (~/.ray/auth_token).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drift import reports
from gateway.drift.jobs import RayJobSubmitter, RetrainRequest, SubmitError, cluster_token
from gateway.drift.sidecar import Sidecar
from loadtests.bench import process
from tests.unit.test_drift_sidecar import MODEL, _shifted_log, drift_settings, make_repository, run_all


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    token = cluster_token()
    return JobSubmissionClient(address, headers={"authorization": f"Bearer {token}"} if token else None)


@pytest.fixture(scope="module")
def jobs_address() -> Iterator[str]:
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, node, objects = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = Path(temp) / "ray-start.log"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "1",
           "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node), "--object-manager-port", str(objects), "--temp-dir", temp,
           "--disable-usage-stats"]
    address = f"http://127.0.0.1:{dash}"
    with process(cmd, log, stop_timeout_s=20) as proc:
        try:
            until = time.monotonic() + 240
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited; its log:\n{log.read_text()[-3000:]}")
                try:
                    _client(address).list_jobs()
                    break
                except Exception:  # noqa: BLE001 - not up yet (connection refused, 5xx while starting)
                    if time.monotonic() > until:
                        raise RuntimeError(f"no Jobs API at {address}; log:\n{log.read_text()[-3000:]}") from None
                    time.sleep(1)
            yield address
        finally:
            # `ray start --block` stops what it started on SIGTERM (slowly, on a busy machine); whatever is
            # left of its session (its process group, and workers that made their own groups) is killed.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
            _kill_session(proc.pid)


def _kill_session(sid: int) -> None:
    """SIGKILL to every process of the session that `process()` started (start_new_session: sid == its pid)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command name: state, ppid, pgrp, session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def _jobs(address: str, submission_id: str) -> list[Any]:
    return [j for j in _client(address).list_jobs() if j.submission_id == submission_id]


def _wait_done(address: str, submission_id: str, timeout_s: float = 180) -> str:
    client = _client(address)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise AssertionError(f"job {submission_id} still not done after {timeout_s} s")


def test_the_same_submission_id_twice_is_one_job(jobs_address: str) -> None:
    submitter = RayJobSubmitter(jobs_address)
    request = RetrainRequest("retrain-twice-1-w7", "twice", "1", 7, "python -c \"print('retraining twice/1')\"")
    first = submitter.submit(request)
    second = submitter.submit(request)
    assert first.outcome == "submitted" and first.job == "retrain-twice-1-w7"
    assert second.outcome == "exists" and second.job == "retrain-twice-1-w7"
    assert len(_jobs(jobs_address, "retrain-twice-1-w7")) == 1
    assert _wait_done(jobs_address, "retrain-twice-1-w7") == "SUCCEEDED"
    # After the job finished, the id is still taken.
    assert submitter.submit(request).outcome == "exists"
    job = _client(jobs_address).get_job_info("retrain-twice-1-w7")
    assert job.metadata is not None
    assert {k: job.metadata[k] for k in ("drift_model", "drift_version", "drift_window")} == {
        "drift_model": "twice", "drift_version": "1", "drift_window": "7"}


def test_an_unreachable_jobs_api_is_a_submit_error() -> None:
    (port,) = _free_ports(1)
    with pytest.raises(SubmitError, match="Ray Jobs API"):
        RayJobSubmitter(f"http://127.0.0.1:{port}").submit(RetrainRequest("retrain-x-1-w0", "x", "1", 0, "true"))


def test_two_sidecars_on_one_log_start_one_retraining_job(tmp_path: Path, jobs_address: str) -> None:
    repo = make_repository(tmp_path / "repo")
    _shifted_log(tmp_path / "log")
    entry = "python -c \"import sys; print('retrain', sys.argv[1:])\" {model} {version} {report}"
    outcomes = []
    for name in ("a", "b"):
        settings = drift_settings(tmp_path / name, retrain_entrypoint=entry, jobs_address=jobs_address)
        sidecar = Sidecar(settings, repo, tmp_path / "log", RayJobSubmitter(jobs_address))
        run_all(sidecar)
        assert sidecar.pending == []
        outcomes += [a["outcome"] for a in reports.read_alarms(tmp_path / name / "reports") if a["event"] == "job"]
    assert outcomes == ["submitted", "exists"]
    jobs = _jobs(jobs_address, "retrain-clf-1-w5")
    assert len(jobs) == 1
    assert _wait_done(jobs_address, "retrain-clf-1-w5") == "SUCCEEDED"
    logs = _client(jobs_address).get_job_logs("retrain-clf-1-w5")
    report = reports.report_path(tmp_path / "a" / "reports", MODEL, "1", 5).resolve()
    assert f"retrain ['clf', '1', '{report}']" in logs
