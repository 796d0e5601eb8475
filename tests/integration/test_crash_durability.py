"""kill -9 of a gateway under load: every request whose client got an answer is in the request log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.request_log import RequestLogReader
from tests.integration.conftest import RunningGateway


def test_sigkill_under_load_loses_no_answered_request(gateway: RunningGateway, tmp_path: Path) -> None:
    # A second gateway on the session's Ray cluster: it attaches to the running model versions.
    ready, log_dir, out = tmp_path / "ready.json", tmp_path / "request_log", tmp_path / "gateway.log"
    env = {**os.environ, "GATEWAY_REQUEST_LOG__DIR": str(log_dir), "GATEWAY_EXAMPLE_MODELS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--repository", str(gateway.repository),
                             "--ray-address", gateway.ray_address, "--http-port", "0", "--grpc-port", "0",
                             "--metrics-port", "0", "--ready-file", str(ready)],
                            stdout=out.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        until = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < until, out.read_text()[-3000:]
            time.sleep(0.2)
        address = f"127.0.0.1:{json.loads(ready.read_text())['grpc_port']}"
        answered: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(n: int) -> None:
            c = grpcclient.InferenceServerClient(address)
            x = np.ones((1, 16), np.float32)
            i = 0
            while not stop.is_set():
                rid = f"c{n}-{i}"
                i += 1
                inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
                inp.set_data_from_numpy(x)
                try:
                    c.infer("echo", [inp], model_version="1", request_id=rid, client_timeout=5)
                except Exception:  # noqa: BLE001 - the kill fails whatever is in flight
                    return
                with lock:
                    answered.append(rid)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load, no chance to flush anything
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if len(answered) < 300:
        pytest.fail(f"only {len(answered)} requests were answered before the kill")
    logged = {str(r["request_id"]) for r in RequestLogReader(log_dir)}
    missing = [rid for rid in answered if rid not in logged]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the log: {missing[:5]}"
