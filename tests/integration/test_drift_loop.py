"""The closed loop on a real Ray cluster: serving -> request log -> drift sidecar -> alarm -> Ray job ->
new version with lineage -> canary on a ramp plan, served by the gateway.

A cluster with its Jobs API (`ray start --head`), a gateway joined to it, and two sidecars reading the same
request log. Traffic from the training distribution raises no alarm; shifted traffic with labels posted back
raises one alarm, starts one retraining job (the second sidecar starts none), and the job registers version 3
with lineage and starts it as a canary at the plan's first step.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from contract.repository import Repository
from gateway.drift import reports
from gateway.drift.settings import DEFAULT_ENTRYPOINT
from loadtests.harness import process
from tests.integration.conftest import ADMIN_TOKEN, until, wait_ready
from tests.integration.ray_head import RayHead, jobs_client, ray_head, wait_job

MODEL = "breast_cancer"
WINDOW_ROWS = 200
ROWS_PER_REQUEST = 4


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head(num_cpus=2) as h:
        yield h


def sidecar_config(root: Path, repository: Path, log_dir: Path, jobs: str) -> Path:
    config = root / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repository": str(repository),
                "request_log": {"dir": str(log_dir)},
                "drift": {
                    "state_file": str(root / "state.npz"),
                    "reports_dir": str(root / "reports"),
                    "metrics_port": 0,
                    "window_rows": WINDOW_ROWS,
                    "max_age_s": 3600,
                    "plot_interval_s": 3600,
                    "poll_interval_s": 0.2,
                    "commit_interval_s": 0.5,
                    "jobs_address": jobs,
                    # The job runs on this host's cluster, with this environment's Python.
                    "retrain_entrypoint": DEFAULT_ENTRYPOINT.replace("python", shlex.quote(sys.executable), 1),
                    "policy": {
                        "min_samples": WINDOW_ROWS,
                        "consecutive_windows": 2,
                        "min_features": 3,
                        "cooldown_s": 86400,
                    },
                },
            }
        )
    )
    return config


def shifted_rows() -> tuple[np.ndarray, np.ndarray]:
    """Labelled rows of the data set whose ten 'mean' features read twice as large (a recalibrated device)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    idx = np.random.default_rng(7).permutation(len(data.target))
    x = data.data[idx].astype(np.float32)
    x[:, :10] *= 2
    return x, data.target[idx]


def predict(http: httpx.Client, x: np.ndarray, rid: str) -> None:
    body = {
        "id": rid,
        "inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
    }
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text


def windows_closed(reports_dir: Path, version: str = "1") -> int:
    return len(list((reports_dir / MODEL / version).glob("window-*.json")))


def test_drift_raises_one_alarm_one_job_and_a_canary(head: RayHead, tmp_path: Path) -> None:
    repository, log_dir = tmp_path / "repository", tmp_path / "request_log"
    ready, out = tmp_path / "ready.json", tmp_path / "gateway.log"
    env = {
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_ADMIN_PORT": "0",
        "GATEWAY_REQUEST_LOG__DIR": str(log_dir),
        "GATEWAY_TRAFFIC_FILE": str(tmp_path / "traffic.json"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(repository),
        "--ray-address",
        head.gcs,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
    ]
    with process(cmd, out, env, stop_timeout_s=60) as gw:
        info = wait_ready(ready, gw, out, 240)
        admin = httpx.Client(
            base_url=f"http://127.0.0.1:{info['admin_port']}",
            timeout=30,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{info['http_port']}", timeout=30)
        assert admin.put(f"/admin/traffic/{MODEL}", json={"weights": {"1": 100}}).status_code == 200

        sidecars = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            config = sidecar_config(tmp_path / name, repository, log_dir, head.jobs)
            sidecars[name] = (tmp_path / name / "reports", config)
        with (
            process(
                [sys.executable, "-m", "gateway.cli", "drift", "run", "--config", str(sidecars["a"][1]), "--quiet"],
                tmp_path / "a.log",
            ),
            process(
                [sys.executable, "-m", "gateway.cli", "drift", "run", "--config", str(sidecars["b"][1]), "--quiet"],
                tmp_path / "b.log",
            ),
        ):
            # 1. Traffic from the training distribution: two full windows, no alarm.
            with np.load(repository / MODEL / "1" / "reference.npz") as ref:
                reference = np.asarray(ref["inputs"], np.float32)
            rng = np.random.default_rng(3)
            for i in range(2 * WINDOW_ROWS // ROWS_PER_REQUEST):
                predict(http, reference[rng.integers(0, len(reference), ROWS_PER_REQUEST)], f"calm-{i}")
            for reports_dir, _ in sidecars.values():
                until(lambda d=reports_dir: windows_closed(d) >= 2, "two windows of calm traffic")
                assert list(reports.read_alarms(reports_dir)) == []

            # 2. Shifted traffic, each request's labels posted back: one alarm, one job.
            x, y = shifted_rows()
            for i in range(0, 3 * WINDOW_ROWS, ROWS_PER_REQUEST):
                rows = slice(i % (len(x) - ROWS_PER_REQUEST), i % (len(x) - ROWS_PER_REQUEST) + ROWS_PER_REQUEST)
                predict(http, x[rows], f"drift-{i}")
                r = http.post(
                    f"/v2/models/{MODEL}/feedback",
                    json={"request_id": f"drift-{i}", "label": [int(v) for v in y[rows]]},
                )
                assert r.status_code == 200, r.text

            def jobs() -> list[Any]:
                return [
                    j
                    for j in jobs_client(head.jobs).list_jobs()
                    if str(j.submission_id).startswith(f"retrain-{MODEL}-1-")
                ]

            job = until(lambda: jobs(), "a retraining job")[0]
            status = wait_job(head.jobs, job.submission_id, timeout_s=400)
            logs = jobs_client(head.jobs).get_job_logs(job.submission_id)
            assert status == "SUCCEEDED", logs[-3000:]
            alarms = {
                name: until(
                    lambda d=d: [a for a in reports.read_alarms(d) if a["event"] == "job"],
                    f"sidecar {name} to record the job",
                )
                for name, (d, _) in sidecars.items()
            }
        outcomes = [a["outcome"] for events in alarms.values() for a in events]
        assert outcomes.count("submitted") == 1, alarms
        assert {o for o in outcomes if o != "submitted"} <= {"active", "exists"}, alarms
        assert len(jobs()) == 1  # the second sidecar started none

        # 3. Version 3 registered with lineage, started as a canary at the plan's first step.
        summary = json.loads(logs[logs.rindex("\n{") + 1 :])  # the job's JSON summary comes last
        assert summary["outcome"] == "canary_started", summary
        manifest = Repository(repository).load(MODEL, "3").manifest
        lineage = manifest.lineage
        assert lineage is not None and lineage.parent_version == "1", lineage
        table = admin.get(f"/admin/traffic/{MODEL}").json()
        assert table["ramp"]["version"] == "3" and table["ramp"]["percent"] == 5, table
        assert table["weights"] == {"1": 95, "3": 5}
        # The gateway found the new version in the repository and serves it.
        until(
            lambda: http.get(f"/v2/models/{MODEL}/versions/3/ready").status_code == 200,
            "the gateway to serve version 3",
        )
        answered = {
            http.post(
                f"/v2/models/{MODEL}/infer",
                json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": x[0].tolist()}]},
            ).json()["model_version"]
            for _ in range(200)
        }
        assert answered == {"1", "3"}  # 5% of 200 unpinned requests: the canary answers some (P(none) < 1e-4)
