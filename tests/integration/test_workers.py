"""`workers: 2`: two gateway processes share the ports (SO_REUSEPORT); connections opened once the gateway
says it is ready are spread over both, and each process logs what it answered."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.request_log import RequestLogReader
from loadtests.harness import process
from tests.integration.conftest import RunningGateway, wait_ready


def test_two_worker_processes_share_the_ports(gateway: RunningGateway, tmp_path: Path) -> None:
    ready, log_dir, out = tmp_path / "ready.json", tmp_path / "request_log", tmp_path / "gateway.log"
    env = {"GATEWAY_REQUEST_LOG__DIR": str(log_dir), "GATEWAY_EXAMPLE_MODELS": "false"}
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(gateway.repository),
        "--ray-address",
        gateway.ray_address,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--workers",
        "2",
        "--ready-file",
        str(ready),
    ]
    with process(cmd, out, env) as proc:
        address = f"127.0.0.1:{wait_ready(ready, proc, out, 180)['grpc_port']}"
        x = np.ones((1, 4), np.float32)
        answered = 0
        for i in range(16):  # 16 separate connections: each lands on one of the two processes
            channel_args = [("grpc.channel_id", i), ("grpc.use_local_subchannel_pool", 1)]
            with grpcclient.InferenceServerClient(address, channel_args=channel_args) as client:
                inp = grpcclient.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(x)
                for _ in range(5):
                    r = client.infer("stall", [inp], request_id=f"w-{i}")
                    np.testing.assert_array_equal(r.as_numpy("y"), x)
                    answered += 1
        by_process = Counter(
            r["gateway_id"] for r in RequestLogReader(log_dir) if str(r["request_id"]).startswith("w-")
        )
        assert sum(by_process.values()) == answered == 80
        # P(all 16 connections on one process) = 2 * 2**-16 if the kernel spreads them evenly.
        assert len(by_process) == 2, by_process
    assert proc.returncode == 0, out.read_text()[-3000:]
