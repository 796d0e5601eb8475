"""Operators change the split at run time with `gateway traffic`: every gateway follows the cluster's one
table, invalid changes change nothing, sticky keys stay put, and 50 changes under load fail no request."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN_TOKEN, RunningGateway, second_gateway

X = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [0.5] * 30}]}


def traffic(gw: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "traffic", "--admin", gw.admin_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
    )


def answered_by(http_url: str, n: int, key: str | None = None) -> Counter[str]:
    headers = {"x-routing-key": key} if key else {}
    with httpx.Client(base_url=http_url, timeout=30) as http:
        return Counter(
            http.post("/v2/models/breast_cancer/infer", json=X, headers=headers).json()["model_version"]
            for _ in range(n)
        )


@pytest.fixture
def restore(gateway: RunningGateway) -> Iterator[None]:
    yield
    # Other tests expect unpinned requests on the newest version.
    assert traffic(gateway, "set", "breast_cancer", "1=0", "2=100", "--reason", "test cleanup").returncode == 0


def test_operator_changes_the_split_live(gateway: RunningGateway, restore: None) -> None:
    done = traffic(gateway, "set", "breast_cancer", "1=100", "2=0", "--reason", "pin traffic to v1")
    assert done.returncode == 0, done.stderr
    assert answered_by(gateway.http_url, 20) == Counter({"1": 20})

    refused = traffic(gateway, "set", "breast_cancer", "1=90", "2=20")
    assert refused.returncode == 1 and "sum to 100" in refused.stderr
    refused = traffic(gateway, "set", "echo", "1=50", "2=50")  # echo v2 needs a GPU: not ready
    assert refused.returncode == 1 and "not ready" in refused.stderr
    shown = traffic(gateway, "show", "breast_cancer")
    assert "v1=100%" in shown.stdout and "v2=0%" in shown.stdout  # the refused changes changed nothing

    assert traffic(gateway, "set", "breast_cancer", "1=50", "2=50").returncode == 0
    assert len(answered_by(gateway.http_url, 10, key="user-7")) == 1  # a key sticks to one version
    keyed = Counter(answered_by(gateway.http_url, 1, key=f"user-{i}").most_common(1)[0][0] for i in range(60))
    assert set(keyed) == {"1", "2"}

    history = traffic(gateway, "history", "breast_cancer")
    assert history.returncode == 0 and "pin traffic to v1" in history.stdout


def test_a_second_gateway_follows_the_table(gateway: RunningGateway, restore: None, tmp_path: Path) -> None:
    with second_gateway(gateway, tmp_path) as (_, _, _, second_http):
        assert answered_by(second_http, 5) == Counter({"2": 5})
        changed = time.monotonic()
        assert traffic(gateway, "set", "breast_cancer", "1=100", "2=0").returncode == 0
        until = time.monotonic() + 10
        while answered_by(second_http, 3) != Counter({"1": 3}):
            assert time.monotonic() < until, "the second gateway did not follow the change"
            time.sleep(0.05)
        print(f"second gateway followed the change after {time.monotonic() - changed:.2f} s")


def test_50_split_changes_under_load_fail_no_request(gateway: RunningGateway, restore: None) -> None:
    stop = threading.Event()
    outcomes: Counter[int] = Counter()

    def load() -> None:
        with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
            while not stop.is_set():
                outcomes[http.post("/v2/models/breast_cancer/infer", json=X).status_code] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=gateway.admin_url, headers=headers, timeout=30) as admin:
        for i in range(50):
            weights = {"1": 90, "2": 10} if i % 2 == 0 else {"1": 10, "2": 90}
            assert admin.put("/admin/traffic/breast_cancer", json={"weights": weights}).status_code == 200
    stop.set()
    for t in threads:
        t.join(30)
    assert outcomes[200] > 50 and set(outcomes) == {200}, outcomes
