"""Model repository control with stock tritonclient: load deploys a model from the repository, unload drains it
(requests already accepted finish), both guarded by the admin token. A second gateway on the session's Ray
cluster has repository_control on; the model it loads is one only this test uses."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from contract.manifest import Manifest, TensorSpecModel
from contract.repository import Repository
from loadtests.harness import process
from tests.integration.conftest import RunningGateway, wait_ready

TOKEN = "model-control-token"
MODEL = "loadable"
SLOW_IDENTITY = """
import time

def predict(inputs):
    time.sleep(0.3)  # long enough that requests are in flight when the unload starts
    return {"y": inputs["x"]}
"""


@pytest.fixture
def controlled(gateway: RunningGateway, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(gRPC address, HTTP URL) of a gateway with repository_control on."""
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 4])]
    out = [TensorSpecModel(name="y", datatype="FP32", shape=[-1, 4])]
    manifest = Manifest(
        name=MODEL, version="1", runtime="python", artifact="model.py", inputs=spec, outputs=out, cpus_per_replica=0.05
    )
    ready, log = tmp_path / "ready.json", tmp_path / "gateway.log"
    env = {
        "GATEWAY_REQUEST_LOG__DIR": str(tmp_path / "request_log"),
        "GATEWAY_EXAMPLE_MODELS": "false",
        "GATEWAY_REPOSITORY_CONTROL": "true",
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "GATEWAY_ADMIN_PORT": "0",
    }
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(gateway.repository)]
    cmd += ["--ray-address", gateway.ray_address, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    cmd += ["--ready-file", str(ready)]
    with process(cmd, log, env) as proc:
        info = wait_ready(ready, proc, log, 180)
        # Written after the gateway started: it is in the repository, not yet served.
        Repository(gateway.repository).write_version(manifest, lambda d: (d / "model.py").write_text(SLOW_IDENTITY))
        yield f"127.0.0.1:{info['grpc_port']}", f"http://127.0.0.1:{info['http_port']}"


def _infer(address: str, value: float) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    try:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.full((1, 4), value, np.float32))
        out: np.ndarray = client.infer(MODEL, [inp], client_timeout=60).as_numpy("y")
        return out
    finally:
        client.close()


def test_load_and_unload_under_load_fail_no_accepted_request(controlled: tuple[str, str]) -> None:
    address, http_url = controlled
    admin = {"authorization": f"Bearer {TOKEN}"}
    client = grpcclient.InferenceServerClient(address)
    with pytest.raises(InferenceServerException, match="admin token"):
        client.load_model(MODEL)
    assert httpx.post(f"{http_url}/v2/repository/models/{MODEL}/load").status_code == 401
    with pytest.raises(InferenceServerException, match="no model 'nothing_here'"):
        client.load_model("nothing_here", headers=admin)

    client.load_model(MODEL, headers=admin)  # returns once the version is ready
    assert client.is_model_ready(MODEL, "1")
    assert _infer(address, 1.0).tolist() == [[1.0] * 4]

    with ThreadPoolExecutor(8) as pool:
        inflight = [pool.submit(_infer, address, float(i)) for i in range(8)]
        time.sleep(0.15)  # all eight are accepted and waiting on the 0.3 s model
        client.unload_model(MODEL, headers=admin)  # returns once they have drained
        answers = [f.result(timeout=60) for f in inflight]
    assert [a.tolist() for a in answers] == [[[float(i)] * 4] for i in range(8)]
    with pytest.raises(InferenceServerException, match="unknown model"):
        _infer(address, 0.0)
    assert MODEL not in {m["name"] for m in client.get_model_repository_index(as_json=True).get("models", [])}

    # Load again over HTTP; it serves as before.
    r = httpx.post(f"{http_url}/v2/repository/models/{MODEL}/load", headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    assert _infer(address, 2.0).tolist() == [[2.0] * 4]
    r = httpx.post(f"{http_url}/v2/repository/models/{MODEL}/unload", headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    client.close()
