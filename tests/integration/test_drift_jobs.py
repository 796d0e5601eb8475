"""Retraining jobs on a real Ray cluster with its job server: one `ray start --head --block` with the
dashboard, started by this module in its own process group and killed at the end (never `ray stop`).

The gateway's embedded Ray runs without the dashboard, so it has no Jobs API; this cluster does. A cluster
started by `ray start` has token authentication on; the submitter sends the local token (~/.ray/auth_token).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drift import reports
from gateway.drift.jobs import RayJobSubmitter, RetrainRequest, SubmitError
from gateway.drift.sidecar import Sidecar
from tests.integration.ray_head import free_ports, jobs_client, ray_head, wait_job
from tests.unit.test_drift_sidecar import MODEL, _shifted_log, drift_settings, make_repository, run_all


@pytest.fixture(scope="module")
def jobs_address() -> Iterator[str]:
    with ray_head() as head:
        yield head.jobs


def _jobs(address: str, submission_id: str) -> list[Any]:
    return [j for j in jobs_client(address).list_jobs() if j.submission_id == submission_id]


def test_the_same_submission_id_twice_is_one_job(jobs_address: str) -> None:
    submitter = RayJobSubmitter(jobs_address)
    request = RetrainRequest("retrain-twice-1-w7", "twice", "1", 7, "python -c \"print('retraining twice/1')\"")
    first = submitter.submit(request)
    second = submitter.submit(request)
    assert first.outcome == "submitted" and first.job == "retrain-twice-1-w7"
    assert second.outcome == "exists" and second.job == "retrain-twice-1-w7"
    assert len(_jobs(jobs_address, "retrain-twice-1-w7")) == 1
    assert wait_job(jobs_address, "retrain-twice-1-w7") == "SUCCEEDED"
    # After the job finished, the id is still taken.
    assert submitter.submit(request).outcome == "exists"
    job = jobs_client(jobs_address).get_job_info("retrain-twice-1-w7")
    assert job.metadata is not None
    assert {k: job.metadata[k] for k in ("drift_model", "drift_version", "drift_window")} == {
        "drift_model": "twice",
        "drift_version": "1",
        "drift_window": "7",
    }


def test_an_unreachable_jobs_api_is_a_submit_error() -> None:
    (port,) = free_ports(1)
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
    assert wait_job(jobs_address, "retrain-clf-1-w5") == "SUCCEEDED"
    logs = jobs_client(jobs_address).get_job_logs("retrain-clf-1-w5")
    report = reports.report_path(tmp_path / "a" / "reports", MODEL, "1", 5).resolve()
    assert f"retrain ['clf', '1', '{report}']" in logs
