"""A model version served by a remote Open Inference Protocol server is a normal version of ours.

A separate process (tests/oip_server.py) serves the example classifier with ONNX Runtime over gRPC and
HTTP on loopback. A gateway started for this file joins the session's Ray cluster with its own
repository: `remote_cancer` v1 runs the same ONNX file locally, v2 forwards to the remote over gRPC,
v3 over HTTP; `local_echo` is an unrelated local model. Answers through both doors match ONNX Runtime
run directly, the remote's refusals keep their code, and with the remote down its versions answer
UNAVAILABLE while everything else serves, until it is back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract.manifest import Batching, Manifest, RemoteBackend, TensorSpecModel
from contract.repository import Repository
from gateway.request_log import RequestLogReader
from loadtests.harness import process
from tests.integration.conftest import RunningGateway, run_onnx, wait_ready

MODEL = "remote_cancer"
VERSIONS = {"1": "local", "2": "grpc", "3": "http"}
APPS = [(MODEL, v) for v in VERSIONS] + [("local_echo", "1")]
# The session's cluster outlives this file's gateway: its applications are deleted after it, from a subprocess
# so the test process never joins the cluster.
UNDEPLOY = """
import sys
import ray
from ray import serve
from contract.placement import app_name
ray.init(address=sys.argv[1], namespace="gateway", log_to_driver=False, logging_level="ERROR")
for item in sys.argv[2:]:
    serve.delete(app_name(*item.split("/")))
"""


@dataclass
class Setup:
    http: str  # host:port of the test's gateway
    grpc: str
    request_log: Path
    remote: OipProcess


class OipProcess:
    """The remote server as a process of its own, which the test can take down and bring back on its ports."""

    def __init__(self, onnx_file: Path, work: Path) -> None:
        self.onnx_file, self.work = onnx_file, work
        self.grpc_port = self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready, log = self.work / "oip-ready.json", self.work / "oip.log"
        ready.unlink(missing_ok=True)
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.oip_server",
                    "--model",
                    f"breast_cancer={self.onnx_file}",
                    "--grpc-port",
                    str(self.grpc_port),
                    "--http-port",
                    str(self.http_port),
                    "--ready-file",
                    str(ready),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ports = wait_ready(ready, self.proc, log, 60)
        self.grpc_port, self.http_port = ports["grpc_port"], ports["http_port"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def remote_manifest(version: str, protocol: str, port: int) -> Manifest:
    # The width is left open here: the remote server checks it, so its refusals reach our clients. Waiting on
    # the network takes no CPU, so the replica reserves none.
    return Manifest(
        name=MODEL,
        version=version,
        runtime="remote",
        reference="reference.npz",
        cpus_per_replica=0,
        remote=RemoteBackend(url=f"127.0.0.1:{port}", protocol=protocol, model_name="breast_cancer", timeout_s=10),
        inputs=[TensorSpecModel(name="features", datatype="FP32", shape=[-1, -1])],
        outputs=[
            TensorSpecModel(name="probabilities", datatype="FP32", shape=[-1, 2]),
            TensorSpecModel(name="label", datatype="INT64", shape=[-1]),
        ],
        batching=Batching(max_batch_size=64),
    )


def build_repository(root: Path, source: Path, remote: OipProcess) -> None:
    repo = Repository(root)

    def copy(folder: Path) -> None:
        for name in ("model.onnx", "reference.npz"):
            shutil.copyfile(source / name, folder / name)

    local = Repository(source.parent.parent).load("breast_cancer", "1").manifest
    repo.write_version(local.model_copy(update={"name": MODEL, "cpus_per_replica": 0.1}), copy)
    repo.write_version(
        remote_manifest("2", "grpc", remote.grpc_port),
        lambda folder: shutil.copyfile(source / "reference.npz", folder / "reference.npz"),
    )
    repo.write_version(
        remote_manifest("3", "http", remote.http_port),
        lambda folder: shutil.copyfile(source / "reference.npz", folder / "reference.npz"),
    )
    spec = [TensorSpecModel(name="INPUT0", datatype="FP32", shape=[-1, 16])]
    repo.write_version(
        Manifest(
            name="local_echo",
            version="1",
            runtime="array",
            options={"program": "identity"},
            inputs=spec,
            outputs=[spec[0].model_copy(update={"name": "OUTPUT0"})],
            cpus_per_replica=0.1,
        ),
        lambda folder: None,
    )


@pytest.fixture(scope="module")
def setup(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("remote")
    source = gateway.repository / "breast_cancer" / "1"
    remote = OipProcess(source / "model.onnx", work)
    remote.start()
    try:
        build_repository(work / "repository", source, remote)
        ready, log = work / "ready.json", work / "gateway.log"
        env = {"GATEWAY_REQUEST_LOG__DIR": str(work / "request_log"), "GATEWAY_EXAMPLE_MODELS": "false"}
        cmd = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--repository",
            str(work / "repository"),
            "--ray-address",
            gateway.ray_address,
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--ready-file",
            str(ready),
        ]
        with process(cmd, log, env) as proc:
            info = wait_ready(ready, proc, log, 240)
            assert info["ready"], info["models"]
            yield Setup(
                f"127.0.0.1:{info['http_port']}", f"127.0.0.1:{info['grpc_port']}", work / "request_log", remote
            )
    finally:
        remote.kill()
        undeploy(gateway.ray_address)


def undeploy(address: str) -> None:
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env and (env.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        env["RAY_AUTH_MODE"] = "token"  # as `gateway serve` does when it joins a cluster by address
    done = subprocess.run(
        [sys.executable, "-c", UNDEPLOY, address, *(f"{m}/{v}" for m, v in APPS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def infer(setup: Setup, door: str, version: str | None, x: np.ndarray, request_id: str = "") -> dict[str, np.ndarray]:
    mod = grpcclient if door == "grpc" else httpclient
    client = mod.InferenceServerClient(setup.grpc if door == "grpc" else setup.http)
    try:
        inp = mod.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(MODEL, [inp], model_version=version or "", request_id=request_id)
        answered = result.get_response().model_version if door == "grpc" else result.get_response()["model_version"]
        return {
            "version": np.asarray(answered),
            "probabilities": result.as_numpy("probabilities"),
            "label": result.as_numpy("label"),
        }
    finally:
        client.close()


def error_of(setup: Setup, door: str, version: str, x: np.ndarray) -> str:
    with pytest.raises(InferenceServerException) as caught:
        infer(setup, door, version, x)
    status = str(caught.value.status())
    return status.removeprefix("StatusCode.") if door == "grpc" else status


@pytest.mark.parametrize("door", ["grpc", "http"])
def test_remote_versions_answer_like_the_model_run_directly(gateway: RunningGateway, setup: Setup, door: str) -> None:
    x = gateway.reference_inputs()[:16]
    expected = run_onnx(gateway.repository, "1", x)
    for version in VERSIONS:
        out = infer(setup, door, version, x, request_id=f"remote-{door}-{version}")
        assert str(out["version"]) == version
        np.testing.assert_array_equal(out["probabilities"], expected["probabilities"])
        np.testing.assert_array_equal(out["label"], expected["label"])
    assert str(infer(setup, door, None, x[:1])["version"]) == "3"  # unpinned: the newest ready version, remote too

    records = {r["request_id"]: r for r in RequestLogReader(setup.request_log)}
    for version in ("2", "3"):  # remote answers are logged like local ones: inputs, outputs, version, latency
        rec = records[f"remote-{door}-{version}"]
        assert (rec["model"], rec["version"], rec["code"]) == (MODEL, version, "OK")
        label = {t["name"]: t for t in rec["outputs"]}["label"]
        np.testing.assert_array_equal(np.asarray(label["data"]), expected["label"])
        assert rec["model_ms"] > 0


def test_remote_versions_are_listed_and_described_like_local_ones(setup: Setup) -> None:
    index = httpx.post(f"http://{setup.http}/v2/repository/index", json={}).json()
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert all(states[(MODEL, v)] == "READY" for v in VERSIONS)
    meta = httpx.get(f"http://{setup.http}/v2/models/{MODEL}/versions/2").json()
    assert meta["platform"] == "remote" and [t["name"] for t in meta["outputs"]] == ["probabilities", "label"]


@pytest.mark.parametrize("door", ["grpc", "http"])
def test_a_remote_refusal_keeps_its_code(gateway: RunningGateway, setup: Setup, door: str) -> None:
    narrow = gateway.reference_inputs()[:2, :29]  # our manifest allows any width; the remote model takes 30
    for version in ("2", "3"):
        assert error_of(setup, door, version, narrow) == ("INVALID_ARGUMENT" if door == "grpc" else "400")
    assert error_of(setup, door, "1", narrow) == ("INVALID_ARGUMENT" if door == "grpc" else "400")  # local: same


def test_remote_down_is_unavailable_and_the_rest_serves_until_it_is_back(gateway: RunningGateway, setup: Setup) -> None:
    x = gateway.reference_inputs()[:4]
    setup.remote.kill()
    for door in ("grpc", "http"):
        for version in ("2", "3"):
            assert error_of(setup, door, version, x) == ("UNAVAILABLE" if door == "grpc" else "503")
        assert str(infer(setup, door, "1", x)["version"]) == "1"
        echo = httpx.post(
            f"http://{setup.http}/v2/models/local_echo/infer",
            json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]},
        )
        assert echo.status_code == 200 and echo.json()["outputs"][0]["data"] == [1.0] * 16
    body = httpx.post(
        f"http://{setup.http}/v2/models/{MODEL}/versions/2/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": x[0].tolist()}]},
    )
    assert body.status_code == 503 and "unreachable" in body.json()["error"] and body.headers.get("retry-after")

    setup.remote.start()  # the same ports: each replica's one client reconnects by itself
    expected = run_onnx(gateway.repository, "1", x)
    until = time.monotonic() + 90
    for version in ("2", "3"):
        while True:
            try:
                out = infer(setup, "grpc", version, x)
                break
            except InferenceServerException as exc:
                assert "UNAVAILABLE" in str(exc.status()) and time.monotonic() < until, exc
                time.sleep(0.5)
        np.testing.assert_array_equal(out["label"], expected["label"])
