"""One real gateway per test session: a subprocess of `gateway serve` with its own embedded Ray cluster.

The repository holds the example models plus test versions: `faulty` (a Python model that raises
on negative input), `stall` (an identity model that stalls 0.5 s on a marker value), `flood` (the
same behind a gateway queue of 8 rows), `canary` (version 1 answers, 2 always fails, 3 is slow),
`fault` (a 20 ms identity model with two replicas, for replica kills), `drain` (the stalling model,
two rows per batch) and `echo` version 2, which asks for a GPU that no node here offers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from contract.manifest import Accelerator, Batching, Manifest, TensorSpecModel
from contract.repository import Repository
from loadtests.harness import process, wait_for_file
from serving.examples import ensure_examples

FAULTY_MODEL = """
import numpy as np

def predict(inputs):
    x = inputs["x"]
    if (x < 0).any():
        raise ValueError("negative input")
    return {"y": x * 2}
"""
STALL_MODEL = """
import time

def predict(inputs):
    x = inputs["x"]
    if (x == 777).any():  # the marker value stalls the replica, as a real server stall would
        time.sleep(0.5)
    return {"y": x}
"""
BROKEN_MODEL = """
def predict(inputs):
    raise RuntimeError("this version is broken")
"""
SLOW_MODEL = """
import time

def predict(inputs):
    time.sleep(0.05)
    return {"y": inputs["x"]}
"""
STALL_MARKER = 777.0
FAULT_MODEL = """
import time

def predict(inputs):
    time.sleep(0.02)  # long enough that a killed replica has calls in flight
    return {"y": inputs["x"]}
"""
# How Ray, Ray Serve and gRPC lines look when they reach a terminal: what raylets push to the driver,
# forwarded worker output, Serve's console format, Ray's and gRPC's native log formats, Ray's default
# Python format, and the bare warnings Ray prints at start-up through Python's last-resort handler.
RAY_NOISE = re.compile(
    r"\((raylet|ServeController|ServeReplica|pid=)|^(INFO|WARNING|ERROR) \d{4}-\d\d-\d\d [\d:,]+ \S+ \d+ -- "
    r"|^\[\d{4}-\d\d-\d\d [\d:,.]+ [IWEF] \d+ \d+\]|^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|^\d{4}-\d\d-\d\d [\d:,]+\t(INFO|WARNING|ERROR) \S+:\d+ -- |SIGTERM handler is not set|Token authentication is"
)
FLOOD_QUEUE_ROWS = 8
MAX_REQUEST_BYTES = 1 << 20
T = TypeVar("T")
ADMIN_TOKEN = "integration-admin-token"


@dataclass(frozen=True)
class RunningGateway:
    http: str  # host:port
    grpc: str  # host:port
    metrics: str  # full URL
    repository: Path
    log: Path
    request_log: Path
    ray_address: str
    admin_url: str

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    def reference_inputs(self, version: str = "1") -> np.ndarray:
        with np.load(self.repository / "breast_cancer" / version / "reference.npz") as ref:
            return np.asarray(ref["inputs"], dtype=np.float32)


def build_test_repository(root: Path) -> None:
    ensure_examples(root)
    repo = Repository(root)
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 4])]
    out = [TensorSpecModel(name="y", datatype="FP32", shape=[-1, 4])]
    faulty = Manifest(name="faulty", version="1", runtime="python", artifact="model.py", inputs=spec, outputs=out)
    repo.write_version(faulty, lambda d: (d / "model.py").write_text(FAULTY_MODEL))
    stall = faulty.model_copy(update={"name": "stall"})
    repo.write_version(stall, lambda d: (d / "model.py").write_text(STALL_MODEL))
    # The same stalling model behind a gateway queue of 8 rows: a flood overflows it.
    flood = stall.model_copy(update={"name": "flood", "batching": Batching(max_queue_rows=FLOOD_QUEUE_ROWS)})
    repo.write_version(flood, lambda d: (d / "model.py").write_text(STALL_MODEL))
    # `canary`: version 1 answers, 2 fails on every call, 3 answers slowly (shadow and ramp tests).
    for version, code in (("1", STALL_MODEL), ("2", BROKEN_MODEL), ("3", SLOW_MODEL)):
        canary = faulty.model_copy(update={"name": "canary", "version": version, "cpus_per_replica": 0.05})
        repo.write_version(canary, lambda d, code=code: (d / "model.py").write_text(code))
    # Only tests/integration/test_faults.py touches it: it kills one of its two replicas.
    fault = faulty.model_copy(update={"name": "fault", "replicas": 2, "cpus_per_replica": 0.05})
    repo.write_version(fault, lambda d: (d / "model.py").write_text(FAULT_MODEL))
    # The stalling model two rows per batch: 16 stalled requests keep it busy for 4 s (SIGTERM drain test).
    drain = stall.model_copy(
        update={
            "name": "drain",
            "cpus_per_replica": 0.05,
            "batching": Batching(max_batch_size=2, replica_max_batch_size=1),
        }
    )
    repo.write_version(drain, lambda d: (d / "model.py").write_text(STALL_MODEL))
    echo = repo.load("echo", "1").manifest
    gpu = echo.model_copy(update={"version": "2", "accelerator": Accelerator(kind="gpu", count=1)})
    repo.write_version(gpu, lambda d: None)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("gateway")
    repository = root / "repository"
    build_test_repository(repository)
    ready_file, log_file = root / "ready.json", root / "gateway.log"
    env = {
        "GATEWAY_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "RAY_USAGE_STATS_ENABLED": "0",
        "GATEWAY_REQUEST_LOG__DIR": str(root / "request_log"),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_ADMIN_PORT": "0",
        "GATEWAY_TRAFFIC_FILE": str(root / "traffic_table.json"),
        "GATEWAY_EXPERIMENTS__JOIN_INTERVAL_S": "0.5",  # experiments decide within a second of their evidence
    }
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ray-num-cpus",
        "2",
        "--ready-file",
        str(ready_file),
    ]
    with process(cmd, log_file, env, stop_timeout_s=60) as proc:
        info = wait_ready(ready_file, proc, log_file, 240)
        yield RunningGateway(
            f"127.0.0.1:{info['http_port']}",
            f"127.0.0.1:{info['grpc_port']}",
            info["metrics"],
            repository,
            log_file,
            root / "request_log",
            info["ray_address"],
            f"http://127.0.0.1:{info['admin_port']}",
        )


def run_onnx(repository: Path, version: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model run directly, without the gateway: the ground truth for gateway answers."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(repository / "breast_cancer" / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities, label = sess.run(["probabilities", "label"], {"features": x})
    return {"probabilities": probabilities, "label": label}


@contextmanager
def second_gateway(gw: RunningGateway, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, str]]:
    """A second gateway on the session's Ray cluster: (process, gRPC address, request log dir, HTTP URL).

    It attaches to the model versions the session gateway already runs, so it starts in seconds."""
    ready, log_dir, out = tmp_path / "ready.json", tmp_path / "request_log", tmp_path / "gateway.log"
    env = {"GATEWAY_REQUEST_LOG__DIR": str(log_dir), "GATEWAY_EXAMPLE_MODELS": "false"}
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(gw.repository),
        "--ray-address",
        gw.ray_address,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
    ]
    with process(cmd, out, env) as proc:
        info = wait_ready(ready, proc, out, 120)
        yield proc, f"127.0.0.1:{info['grpc_port']}", log_dir, f"http://127.0.0.1:{info['http_port']}"


def wait_ready(ready: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> dict[str, Any]:
    """What a process started with --ready-file wrote there once it serves; fails the test with the process's log
    when it exits first or takes longer than timeout_s."""
    try:
        return wait_for_file(ready, proc, log, timeout_s, poll_s=0.2)
    except SystemExit as exc:
        pytest.fail(str(exc))


def ray_noise(output: str) -> list[str]:
    """The lines of a gateway's output that Ray, Ray Serve or gRPC printed rather than the gateway."""
    return [line for line in output.splitlines() if RAY_NOISE.search(line)]


def until(check: Callable[[], T], what: str, timeout_s: float = 240.0, every_s: float = 0.2) -> T:
    """check()'s first truthy value; an AssertionError naming `what` if none comes within timeout_s (only a
    broken gateway makes a test wait that long)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class TenantGateway:
    http_url: str
    grpc: str
    admin_url: str
    tenants_file: Path
    metrics: str


@pytest.fixture(scope="session")
def tenant_gateway(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantGateway]:
    """A second gateway on the session's Ray cluster with API keys on (the session gateway keeps them off)."""
    root = tmp_path_factory.mktemp("tenants")
    ready, out, tenants_file = root / "ready.json", root / "gateway.log", root / "tenants.json"
    env = {
        "GATEWAY_EXAMPLE_MODELS": "false",
        "GATEWAY_TENANTS__ENABLED": "true",
        "GATEWAY_TENANTS__FILE": str(tenants_file),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_ADMIN_PORT": "0",
        "GATEWAY_TRAFFIC_FILE": str(root / "traffic_table.json"),
    }
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(gateway.repository)]
    cmd += ["--ray-address", gateway.ray_address, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    with process([*cmd, "--ready-file", str(ready)], out, env) as proc:
        info = wait_ready(ready, proc, out, 120)
        yield TenantGateway(
            f"http://127.0.0.1:{info['http_port']}",
            f"127.0.0.1:{info['grpc_port']}",
            f"http://127.0.0.1:{info['admin_port']}",
            tenants_file,
            info["metrics"],
        )
