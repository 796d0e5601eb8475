"""A second gateway on the session's Ray cluster, stopped under load: kill -9 loses no answered request,
SIGTERM drains (exit 0, nothing hangs, everything answered is logged)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.request_log import RequestLogReader
from tests.integration.conftest import RunningGateway, second_gateway


class Load:
    """8 clients sending echo requests with known ids until the server stops answering."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answered: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(8)]
        for t in self._threads:
            t.start()

    def _client(self, n: int) -> None:
        c = grpcclient.InferenceServerClient(self.address)
        x = np.ones((1, 16), np.float32)
        for i in range(100_000):
            rid = f"c{n}-{i}"
            inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            try:
                c.infer("echo", [inp], model_version="1", request_id=rid, client_timeout=10)
            except InferenceServerException as exc:
                with self._lock:
                    self.failures.append(str(exc.status()))
                return
            with self._lock:
                self.answered.append(rid)

    def wait_for(self, count: int, timeout_s: float = 30) -> None:
        until = time.monotonic() + timeout_s
        while len(self.answered) < count and time.monotonic() < until:
            time.sleep(0.05)
        if len(self.answered) < count:
            pytest.fail(f"only {len(self.answered)} requests were answered")

    def join(self) -> None:
        for t in self._threads:
            t.join(30)


def assert_logged(log_dir: Path, answered: list[str]) -> None:
    logged = {str(r["request_id"]) for r in RequestLogReader(log_dir)}
    missing = [rid for rid in answered if rid not in logged]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the log: {missing[:5]}"


def test_sigkill_under_load_loses_no_answered_request(gateway: RunningGateway, tmp_path: Path) -> None:
    with second_gateway(gateway, tmp_path) as (proc, address, log_dir, _):
        load = Load(address)
        load.wait_for(300)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load, no chance to flush anything
        proc.wait(30)
        load.join()
    assert_logged(log_dir, load.answered)


def test_sigterm_under_load_drains_and_exits_cleanly(gateway: RunningGateway, tmp_path: Path) -> None:
    with second_gateway(gateway, tmp_path) as (proc, address, log_dir, _):
        load = Load(address)
        load.wait_for(300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # the drain bound is 10 s per stage; 30 s covers Ray's own shutdown
        load.join()
    # After SIGTERM new calls are refused; none of the clients' calls hung until its timeout.
    assert str(grpc.StatusCode.DEADLINE_EXCEEDED) not in load.failures, load.failures
    assert_logged(log_dir, load.answered)
