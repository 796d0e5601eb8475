"""Past one machine, on one machine: a Ray cluster of three `ray start` nodes and two gateways joining it.

The head, a worker node offering the custom resource `FPGA` and a worker node without it run as
`ray start --block` processes, each in its own process session (the test ends exactly those groups),
with token authentication on and a token of their own. Two `gateway serve` processes join by address.
The FPGA versions' replicas land only on the FPGA node, the GPU version is reported not ready with the
reason, both gateways serve, and a traffic change through one gateway's admin API reaches the other.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient

from contract.manifest import Accelerator, Manifest, TensorSpecModel
from contract.repository import Repository
from loadtests.harness import free_port
from tests.integration.conftest import wait_ready

ADMIN_TOKEN = "multinode-admin-token"
FPGA = "fpga_model"
GPU = "gpu_model"
RAY = str(Path(sys.executable).with_name("ray"))

# Runs in a subprocess, so the test process itself never joins this cluster: the live nodes and, from Serve's
# own status details (no dashboard needed), the node of every replica.
PROBE = """
import json, sys, time
import ray
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeInstanceDetails
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
details = ServeInstanceDetails(**_get_global_client().get_serve_details())
replicas = [{"deployment": name, "node": r.node_id, "state": str(r.state.value)}
            for app in details.applications.values() for name, d in app.deployments.items() for r in d.replicas]
print(json.dumps({"nodes": nodes, "replicas": replicas}))
"""


@dataclass(frozen=True)
class Cluster:
    address: str
    env: dict[str, str]  # what a process needs to join: the cluster's auth token


@dataclass(frozen=True)
class Gateway:
    http: str
    grpc: str
    admin: str
    info: dict[str, Any]


def node_ports() -> list[str]:
    # Several raylets on one host, beside other people's clusters: every port a node opens must be its own, and
    # its workers take ports the system picks (0) rather than from the range every cluster shares by default.
    return [
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
    ]


@contextmanager
def own_group(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a new session; on exit its whole process group (and nothing else) is killed."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def probe(cluster: Cluster) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **cluster.env, "RAY_AUTH_MODE": "token"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Ray's unix sockets live under its temp dir and their paths must stay short: not under pytest's tmp_path.
    work = Path(tempfile.mkdtemp(prefix="raymn-", dir="/tmp"))
    logs = tmp_path_factory.mktemp("nodes")
    token = {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **token, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    common = ["--block", "--disable-usage-stats", "--num-cpus", "1", "--object-store-memory", str(100 * 2**20)]
    nodes = {
        "head": [
            "--head",
            "--port",
            str(gcs_port),
            "--temp-dir",
            str(work / "ray"),
            "--include-dashboard=false",
            "--dashboard-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
        ],
        "fpga": ["--address", address, "--resources", json.dumps({"FPGA": 2})],
        "plain": ["--address", address],
    }
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        for name, args in nodes.items():  # one at a time: a busy GCS lets a joining raylet time out
            for attempt in range(2):
                log = logs / f"{name}-{attempt}.log"
                proc = stack.enter_context(own_group([RAY, "start", *args, *common, *node_ports()], log, env))
                if started(proc, log):
                    break
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                pytest.fail(f"ray start for the {name} node failed twice:\n{log.read_text()[-3000:]}")
        yield Cluster(address, token)


def started(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> bool:
    until = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > until:
            return False
        time.sleep(0.2)
    return True


def build_repository(root: Path) -> None:
    repo = Repository(root)
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 4])]
    out = [TensorSpecModel(name="y", datatype="FP32", shape=[-1, 4])]
    fpga = Manifest(
        name=FPGA,
        version="1",
        runtime="array",
        options={"program": "identity"},
        inputs=spec,
        outputs=out,
        accelerator=Accelerator(kind="fpga", count=0.5),
        replicas=2,
    )
    repo.write_version(fpga, lambda folder: None)
    repo.write_version(fpga.model_copy(update={"version": "2", "replicas": 1}), lambda folder: None)
    gpu = fpga.model_copy(update={"name": GPU, "accelerator": Accelerator(kind="gpu", count=1), "replicas": 1})
    repo.write_version(gpu, lambda folder: None)


@contextmanager
def gateway_on(cluster: Cluster, repository: Path, work: Path) -> Iterator[Gateway]:
    ready, log = work / "ready.json", work / "gateway.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # the gateway turns token mode on itself
    env.update(
        cluster.env,
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        GATEWAY_ADMIN_PORT="0",
        GATEWAY_TRAFFIC_FILE=str(work.parent / "traffic_table.json"),
        GATEWAY_EXAMPLE_MODELS="false",
        GATEWAY_REQUEST_LOG__DIR=str(work / "request_log"),
        GATEWAY_READY_TIMEOUT_S="120",
    )
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(repository),
        "--ray-address",
        cluster.address,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
    ]
    with own_group(cmd, log, env) as proc:
        info = wait_ready(ready, proc, log, 180)
        yield Gateway(
            f"127.0.0.1:{info['http_port']}",
            f"127.0.0.1:{info['grpc_port']}",
            f"http://127.0.0.1:{info['admin_port']}",
            info,
        )


def answered_by(gw: Gateway, model: str = FPGA) -> str:
    r = httpx.post(
        f"http://{gw.http}/v2/models/{model}/infer",
        timeout=30,
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    version: str = r.json()["model_version"]
    return version


def test_three_nodes_two_gateways(cluster: Cluster, tmp_path: Path) -> None:
    build_repository(tmp_path / "repository")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        gateway_on(cluster, tmp_path / "repository", tmp_path / "a") as a,
        gateway_on(cluster, tmp_path / "repository", tmp_path / "b") as b,
    ):
        # Placement: every replica of the FPGA versions runs on the one node that offers FPGA.
        seen = probe(cluster)
        fpga_nodes = {node for node, resources in seen["nodes"].items() if resources.get("FPGA", 0) > 0}
        assert len(seen["nodes"]) == 3 and len(fpga_nodes) == 1, seen["nodes"]
        replicas = [r for r in seen["replicas"] if r["deployment"].startswith(FPGA)]
        assert len(replicas) == 3 and {r["state"] for r in replicas} == {"RUNNING"}, seen  # v1 has two, v2 one
        assert {r["node"] for r in replicas} == fpga_nodes
        assert not [r for r in seen["replicas"] if r["deployment"].startswith(GPU)]  # never deployed, never pending

        # The GPU version: not ready, with the reason, on both doors of both gateways.
        for gw in (a, b):
            ready = httpx.get(f"http://{gw.http}/v2/models/{GPU}/versions/1/ready")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert grpcclient.InferenceServerClient(gw.grpc).is_model_ready(GPU, "1") is False
            index = {
                (m["name"], m["version"]): m
                for m in httpx.post(f"http://{gw.http}/v2/repository/index", json={}).json()
            }
            assert index[(GPU, "1")]["state"] == "UNAVAILABLE"
            assert "GPU" in index[(GPU, "1")]["reason"] and "add a node" in index[(GPU, "1")]["reason"]
            assert index[(FPGA, "1")]["state"] == index[(FPGA, "2")]["state"] == "READY"
            assert answered_by(gw) == "2"  # both serve: unpinned goes to the newest ready version

        # One traffic table: a change through a's admin API is what b serves, within a bounded poll.
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        changed = httpx.put(
            f"{a.admin}/admin/traffic/{FPGA}",
            headers=headers,
            json={"weights": {"1": 100, "2": 0}, "reason": "multinode test"},
        )
        assert changed.status_code == 200, changed.text
        until = time.monotonic() + 15
        while answered_by(b) != "1":
            assert time.monotonic() < until, "the second gateway did not follow the first one's change"
            time.sleep(0.1)
        shown = httpx.get(f"{b.admin}/admin/traffic/{FPGA}", headers=headers).json()
        assert shown["weights"] == {"1": 100, "2": 0} and shown["revision"] == changed.json()["revision"]
        history = httpx.get(f"{b.admin}/admin/traffic/{FPGA}/history", headers=headers).json()
        assert history[-1]["reason"] == "multinode test"  # b's admin API shows the change made through a
        assert [answered_by(b) for _ in range(5)] == ["1"] * 5 and answered_by(a) == "1"
