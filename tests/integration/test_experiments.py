"""Experiments on the real gateway: two versions of breast_cancer that differ in accuracy, a client that knows
the truth posts labels through the feedback endpoint, and the traffic table decides by itself: it promotes
the better version when it is the new arm, and stops the worse one when that is the new arm."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from loadtests.harness import process
from tests.integration.conftest import ADMIN_TOKEN, RunningGateway, run_onnx, until, wait_ready

MODEL = "breast_cancer"
ROWS = 200  # rows per request; each row is one outcome


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.admin_url, timeout=30, headers={"authorization": f"Bearer {ADMIN_TOKEN}", "x-operator": "qa"}
    ) as client:
        yield client
        client.post(f"/admin/experiments/{MODEL}/stop", json={})  # refused when it has ended: nothing to undo
        assert client.put(f"/admin/traffic/{MODEL}", json={"weights": {"2": 100}}).status_code == 200


@pytest.fixture(scope="module")
def truth(gateway: RunningGateway) -> tuple[np.ndarray, np.ndarray, str, str]:
    """The data set with its labels, and which example version is better on it (the client knows the truth)."""
    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    accuracy = {v: float((run_onnx(gateway.repository, v, x)["label"] == y).mean()) for v in ("1", "2")}
    better, worse = sorted(accuracy, key=lambda v: -accuracy[v])
    assert accuracy[better] > accuracy[worse], accuracy
    return x, y, better, worse


def send_labelled(gateway: RunningGateway, x: np.ndarray, y: np.ndarray, n: int, seed: int) -> None:
    """n requests of ROWS random rows, each from a different user (sticky routing key), then their labels."""
    rng = np.random.default_rng(seed)

    def one(i: int) -> None:
        rows = rng.integers(0, len(x), ROWS)
        rid = f"exp-{uuid.uuid4().hex}"
        body = {
            "id": rid,
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [ROWS, 30], "data": x[rows].ravel().tolist()}],
        }
        with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
            r = http.post(f"/v2/models/{MODEL}/infer", json=body, headers={"x-routing-key": f"user-{seed}-{i}"})
            assert r.status_code == 200, r.text
            fb = http.post(f"/v2/models/{MODEL}/feedback", json={"request_id": rid, "label": y[rows].tolist()})
            assert fb.status_code == 200, fb.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))


def run_until_decided(gateway: RunningGateway, admin: httpx.Client, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    for round_ in range(60):
        status: dict[str, Any] = admin.get(f"/admin/experiments/{MODEL}").json()
        if status["state"] != "running":
            return status
        send_labelled(gateway, x, y, 10, round_)
    raise AssertionError(f"the experiment decided nothing: {status}")


def start(admin: httpx.Client, control: str, treatment: str) -> None:
    plan = {
        "arms": {control: 50, treatment: 50},
        "control": control,
        "metric": "accuracy",
        "mde": 0.01,
        "min_samples": 1000,
        "max_samples": 500_000,
        "guard_metric": "log_loss",
        "guard_margin": 0.5,
        "reason": "which classifier is right more often",
    }
    r = admin.post(f"/admin/experiments/{MODEL}", json=plan)
    assert r.status_code == 200, r.text
    assert r.json()["models"][MODEL] == {control: 50, treatment: 50}


def test_the_better_new_version_is_promoted_by_itself(
    gateway: RunningGateway, admin: httpx.Client, truth: tuple[np.ndarray, np.ndarray, str, str]
) -> None:
    x, y, better, worse = truth
    start(admin, control=worse, treatment=better)
    status = run_until_decided(gateway, admin, x, y)
    assert status["state"] == "promoted", status
    arms = status["arms"]
    assert arms[better]["state"] == "promoted" and arms[better]["lift"]["interval"][0] > 0
    assert arms[better]["n"] >= 1000 and arms[worse]["n"] >= 1000
    assert admin.get(f"/admin/traffic/{MODEL}").json()["weights"] == {better: 100}
    last = admin.get(f"/admin/traffic/{MODEL}/history").json()[-1]
    assert last["who"] == "experiment" and "promoted" in last["reason"] and last["after"] == {better: 100}
    assert last["experiment"]["arms"][better]["lift"]["estimate"] > 0  # the numbers behind the decision


def test_a_worse_new_version_is_stopped_by_itself(
    gateway: RunningGateway, admin: httpx.Client, truth: tuple[np.ndarray, np.ndarray, str, str]
) -> None:
    x, y, better, worse = truth
    start(admin, control=better, treatment=worse)
    status = run_until_decided(gateway, admin, x, y)
    assert status["state"] == "stopped", status
    assert status["arms"][worse]["state"] == "stopped" and status["arms"][worse]["lift"]["interval"][1] < 0
    assert admin.get(f"/admin/traffic/{MODEL}").json()["weights"] == {better: 100}
    history = admin.get(f"/admin/traffic/{MODEL}/history").json()
    stop = next(e for e in reversed(history) if e["reason"].startswith(f"arm {worse} stopped"))
    assert stop["who"] == "experiment" and stop["after"] == {better: 100}
    # Requests now go to control only.
    send_labelled(gateway, x, y, 4, 999)


def join_active(metrics_url: str) -> float:
    """The gateway's gateway_outcome_join_active gauge."""
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("gateway_outcome_join_active "):
            return float(line.split()[1])
    raise AssertionError(f"{metrics_url} has no gateway_outcome_join_active")


def test_gateways_sharing_a_log_root_elect_one_joiner_and_a_survivor_takes_over(
    gateway: RunningGateway, admin: httpx.Client, truth: tuple[np.ndarray, np.ndarray, str, str], tmp_path: Path
) -> None:
    """Two more gateways write under one shared log root (their own, not the session gateway's): while an
    experiment runs exactly one of them joins it, and when that one is killed the other takes over."""
    x, y, better, worse = truth
    shared = tmp_path / "shared_log_root"
    with ExitStack() as stack:
        procs, metrics = [], []
        for name in ("a", "b"):
            ready, out = tmp_path / f"ready-{name}.json", tmp_path / f"gateway-{name}.log"
            env = {
                "GATEWAY_REQUEST_LOG__DIR": str(shared),
                "GATEWAY_EXAMPLE_MODELS": "false",
                "GATEWAY_EXPERIMENTS__JOIN_INTERVAL_S": "0.5",
            }
            cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(gateway.repository)]
            cmd += ["--ray-address", gateway.ray_address, "--http-port", "0", "--grpc-port", "0"]
            cmd += ["--metrics-port", "0", "--ready-file", str(ready)]
            proc = stack.enter_context(process(cmd, out, env))
            procs.append(proc)
            metrics.append(wait_ready(ready, proc, out, 120)["metrics"])
        assert [join_active(m) for m in metrics] == [0.0, 0.0]  # no experiment: nobody reads
        start(admin, control=worse, treatment=better)

        def one_joiner() -> list[float] | None:
            values = [join_active(m) for m in metrics]
            return values if sum(values) == 1 else None

        active = until(one_joiner, "one joiner")
        for _ in range(4):  # and it stays one, interval after interval
            time.sleep(0.5)
            assert [join_active(m) for m in metrics] == active
        assert join_active(gateway.metrics) == 1.0  # the session gateway's own root has a joiner of its own
        holder = active.index(1.0)
        os.killpg(procs[holder].pid, signal.SIGKILL)  # dies holding the lease: no hand-over
        procs[holder].wait()
        survivor = metrics[1 - holder]
        until(lambda: join_active(survivor) == 1.0, "the surviving gateway to take the join over", timeout_s=60)
        assert (shared / ".outcome-join-id").is_file()
        send_labelled(gateway, x, y, 2, 7)  # the experiment goes on
        assert admin.get(f"/admin/experiments/{MODEL}").json()["state"] == "running"
