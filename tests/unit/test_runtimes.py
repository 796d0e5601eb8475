"""serving.runtimes: the array runtime on NumPy, CuPy detection, the Python runtime, ONNX Runtime on an
example model checked against a NumPy re-computation from the ONNX file's own weights (no scikit-learn), and
the remote runtime against a real Open Inference Protocol server on loopback (tests/oip_server.py)."""

from __future__ import annotations

import importlib.util
import pickle
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from contract.manifest import Accelerator, Manifest, RemoteBackend, TensorSpecModel
from contract.repository import Repository, VersionEntry
from serving import examples, runtimes
from serving.remote import RemoteRuntime, fault_for, remote_status
from serving.runtimes import (
    ArrayRuntime,
    AsyncRuntime,
    OnnxRuntime,
    PythonRuntime,
    RuntimeFault,
    array_module,
    load_runtime,
    run_model,
)
from tests.oip_server import OipServer, serve_in_thread


def spec(name: str, shape: list[int], datatype: str = "FP32") -> TensorSpecModel:
    return TensorSpecModel(name=name, datatype=datatype, shape=shape)


def array_manifest(program: str = "identity", **options: object) -> Manifest:
    if program == "identity":
        return Manifest(
            name="a",
            version="1",
            runtime="array",
            options={"program": program, **options},
            inputs=[spec("p", [-1, 2]), spec("q", [-1], "INT64")],
            outputs=[spec("P", [-1, 2]), spec("Q", [-1], "INT64")],
        )
    return Manifest(
        name="a",
        version="1",
        runtime="array",
        artifact="weights.npz",
        options={"program": program, **options},
        inputs=[spec("x", [-1, 3])],
        outputs=[spec("y", [-1, 4])],
    )


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    np.savez(tmp_path / "weights.npz", W=w, b=b)
    return tmp_path, w, b


# --- CuPy or NumPy -------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_array_module_is_numpy_without_cupy() -> None:
    xp, device = array_module()
    assert xp is np and device == "cpu"


def test_array_module_when_cupy_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    assert array_module() == (np, "cpu")


def fake_cupy(count: int | Exception) -> types.ModuleType:
    def get_device_count() -> int:
        if isinstance(count, Exception):
            raise count
        return count

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))  # type: ignore[attr-defined]
    return mod


@pytest.mark.parametrize("count", [0, RuntimeError("cudaErrorNoDevice"), OSError("libcuda.so not found")])
def test_array_module_when_cupy_sees_no_device(monkeypatch: pytest.MonkeyPatch, count: int | Exception) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count))
    assert array_module() == (np, "cpu")


def test_array_module_prefers_cupy_with_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cupy = fake_cupy(1)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert array_module() == (cupy, "gpu")


# --- array runtime ---------------------------------------------------------------------------------


def test_array_identity_echoes_inputs_in_order(tmp_path: Path) -> None:
    rt = ArrayRuntime(array_manifest("identity"), tmp_path)
    assert rt.device == "cpu" and rt.xp is np
    p, q = np.ones((3, 2), dtype=np.float32), np.arange(3)
    out = rt.run({"q": q, "p": p})
    assert set(out) == {"P", "Q"} and out["P"] is p and out["Q"] is q


def test_array_linear_softmax_rows_sum_to_one(weights: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, w, b = weights
    rt = ArrayRuntime(array_manifest("linear", activation="softmax"), folder)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32) * 10
    y = rt.run({"x": x})["y"]
    assert y.shape == (5, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), np.ones(5), rtol=1e-5)
    z = x @ w + b
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_array_linear_softmax_is_stable_for_large_logits(tmp_path: Path) -> None:
    np.savez(tmp_path / "weights.npz", W=np.eye(3, 4, dtype=np.float32) * 1e4, b=np.zeros(4, dtype=np.float32))
    y = ArrayRuntime(array_manifest("linear", activation="softmax"), tmp_path).run(
        {"x": np.array([[1.0, 2.0, 3.0]], dtype=np.float32)}
    )["y"]
    assert np.isfinite(y).all() and y[0].argmax() == 2


def test_array_linear_without_activation_and_sigmoid(weights: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, w, b = weights
    x = np.arange(6, dtype=np.float64).reshape(2, 3)  # converted to the weights' dtype
    y = ArrayRuntime(array_manifest("linear"), folder).run({"x": x})["y"]
    np.testing.assert_allclose(y, x.astype(np.float32) @ w + b, rtol=1e-5)
    s = ArrayRuntime(array_manifest("linear", activation="sigmoid"), folder).run({"x": x})["y"]
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-(x.astype(np.float32) @ w + b))), rtol=1e-5)
    assert ((s > 0) & (s < 1)).all()


def test_array_unknown_program_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="convolution"):
        ArrayRuntime(array_manifest("convolution"), tmp_path)


def test_array_unknown_activation_is_refused(weights: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="softmx"):
        ArrayRuntime(array_manifest("linear", activation="softmx"), weights[0])


# --- python runtime ---------------------------------------------------------------------------------


def test_python_runtime(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(
        "import numpy as np\n\ndef predict(inputs):\n    return {'y': inputs['x'] + 1}\n"
    )
    m = Manifest(name="py", version="3", runtime="python", inputs=[spec("x", [-1])], outputs=[spec("y", [-1])])
    rt = load_runtime(m, tmp_path)
    assert isinstance(rt, PythonRuntime) and rt.device == "cpu"
    assert rt.run({"x": np.array([1.0, 2.0])})["y"].tolist() == [2.0, 3.0]


def test_load_runtime_picks_by_manifest(tmp_path: Path) -> None:
    assert isinstance(load_runtime(array_manifest("identity"), tmp_path), ArrayRuntime)


# --- ONNX Runtime on the example classifier --------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> VersionEntry:
    repo = Repository(tmp_path_factory.mktemp("repo"))
    return examples.write_classifier(repo, "1", "logistic")


def reference_probabilities(model_path: Path, x: np.ndarray) -> np.ndarray:
    """The classifier recomputed in NumPy from the ONNX file's initializers: standardise, dense, softmax."""
    graph = onnx.load(str(model_path)).graph
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in graph.initializer}
    h = (x.astype(np.float64) - weights["mean"]) / weights["scale"]
    i = 0
    while f"W{i + 1}" in weights:  # hidden layers (ReLU), if any
        h = np.maximum(h @ weights[f"W{i}"] + weights[f"b{i}"], 0)
        i += 1
    z = h @ weights[f"W{i}"] + weights[f"b{i}"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_example_classifier_manifest(classifier: VersionEntry) -> None:
    m = classifier.manifest
    assert (m.name, m.version, m.runtime, m.artifact) == ("breast_cancer", "1", "onnx", "model.onnx")
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [("features", "FP32", [-1, 30])]
    assert [(t.name, t.datatype) for t in m.outputs] == [("probabilities", "FP32"), ("label", "INT64")]
    assert m.display_platform == "onnxruntime_onnx"
    assert 0.9 < m.metrics["accuracy"] <= 1.0


def test_onnx_runtime_matches_the_numpy_reference(classifier: VersionEntry) -> None:
    rt = load_runtime(classifier.manifest, classifier.path)
    assert isinstance(rt, OnnxRuntime) and rt.device == "cpu"
    with np.load(classifier.path / "reference.npz") as ref:
        x = ref["inputs"][:64]
        stored = ref["predictions"][:64]
    out = rt.run({"features": x})
    assert list(out) == ["probabilities", "label"]
    p, label = out["probabilities"], out["label"]
    assert p.shape == (64, 2) and p.dtype == np.float32 and label.shape == (64,) and label.dtype == np.int64
    np.testing.assert_allclose(p.sum(axis=1), np.ones(64), rtol=1e-5)
    assert (label == p.argmax(axis=1)).all()
    np.testing.assert_allclose(p, reference_probabilities(classifier.path / "model.onnx", x), atol=1e-5)
    np.testing.assert_allclose(p[:, 1], stored, atol=1e-6)  # the reference statistics written with the version
    assert len(set(label.tolist())) == 2  # a real classifier, not a constant


def test_onnx_runtime_batch_of_one_and_gpu_request_falls_back(classifier: VersionEntry) -> None:
    gpu = classifier.manifest.model_copy(update={"accelerator": Accelerator(kind="gpu")})
    rt = OnnxRuntime(gpu, classifier.path)
    import onnxruntime as ort

    expected = "gpu" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert rt.device == expected
    with np.load(classifier.path / "reference.npz") as ref:
        x = ref["inputs"][:1]
    out = rt.run({"features": x})
    assert out["probabilities"].shape == (1, 2) and out["label"].shape == (1,)


def test_echo_example_is_an_identity_array_model(tmp_path: Path) -> None:
    entry = examples.write_echo(Repository(tmp_path))
    rt = runtimes.load_runtime(entry.manifest, entry.path)
    x = np.random.default_rng(0).normal(size=(4, examples.ECHO_WIDTH)).astype(np.float32)
    np.testing.assert_array_equal(rt.run({"INPUT0": x})["OUTPUT0"], x)


# --- remote runtime: a real Open Inference Protocol server on loopback (tests/oip_server.py) -----------


def remote_manifest(url: str, protocol: str = "grpc", **backend: object) -> Manifest:
    """The example classifier served elsewhere; the width is left open so the remote server checks it."""
    return Manifest(
        name="cancer",
        version="7",
        runtime="remote",
        remote=RemoteBackend(url=url, protocol=protocol, model_name="breast_cancer", **backend),
        inputs=[spec("features", [-1, -1])],
        outputs=[spec("probabilities", [-1, 2]), spec("label", [-1], "INT64")],
    )


@pytest.fixture(scope="module")
def oip(classifier: VersionEntry) -> Iterator[OipServer]:
    with serve_in_thread({"breast_cancer": classifier.path / "model.onnx"}) as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def server_url(oip: OipServer, protocol: str) -> str:
    return f"127.0.0.1:{oip.grpc_port if protocol == 'grpc' else oip.http_port}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_remote_runtime_answers_like_onnx_runtime_run_here(
    classifier: VersionEntry, oip: OipServer, protocol: str
) -> None:
    rt = load_runtime(remote_manifest(server_url(oip, protocol), protocol), classifier.path)
    assert isinstance(rt, RemoteRuntime) and isinstance(rt, AsyncRuntime) and rt.device == "remote"
    local = OnnxRuntime(classifier.manifest, classifier.path)
    with np.load(classifier.path / "reference.npz") as ref:
        x = ref["inputs"][:32]
    before = oip.models.infer_count
    for rows in (1, 32):
        out = await run_model(rt, {"features": x[:rows]})
        expected = local.run({"features": x[:rows]})
        assert list(out) == ["probabilities", "label"]
        np.testing.assert_array_equal(out["probabilities"], expected["probabilities"])
        np.testing.assert_array_equal(out["label"], expected["label"])
        assert out["probabilities"].dtype == np.float32 and out["label"].dtype == np.int64
    client = rt._client
    await rt.run_async({"features": x[:2]})
    assert rt._client is client and client is not None  # one client for the replica, not one per call
    assert oip.models.infer_count == before + 3


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_remote_refusal_is_invalid_argument_with_the_remote_reason(
    classifier: VersionEntry, oip: OipServer, protocol: str
) -> None:
    rt = RemoteRuntime(remote_manifest(server_url(oip, protocol), protocol))
    with pytest.raises(RuntimeFault) as caught:
        await rt.run_async({"features": np.ones((2, 29), np.float32)})  # the model takes 30 features
    assert caught.value.code == "INVALID_ARGUMENT" and "refused the request" in caught.value.message
    assert "features" in caught.value.message  # the remote's own words say what was wrong


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_remote_unknown_model_is_unavailable_and_says_to_check_the_manifest(
    oip: OipServer, protocol: str
) -> None:
    m = remote_manifest(server_url(oip, protocol), protocol)
    rt = RemoteRuntime(m.model_copy(update={"remote": m.remote.model_copy(update={"model_name": "nope"})}))
    with pytest.raises(RuntimeFault) as caught:
        await rt.run_async({"features": np.ones((1, 30), np.float32)})
    assert caught.value.code == "UNAVAILABLE" and "manifest's remote settings" in caught.value.message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_remote_server_down_is_unavailable(protocol: str) -> None:
    rt = RemoteRuntime(remote_manifest(f"127.0.0.1:{closed_port()}", protocol, timeout_s=5))
    with pytest.raises(RuntimeFault) as caught:
        await rt.run_async({"features": np.ones((1, 30), np.float32)})
    assert caught.value.code == "UNAVAILABLE" and "unreachable" in caught.value.message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_remote_slower_than_its_timeout_is_deadline_exceeded(classifier: VersionEntry, protocol: str) -> None:
    with serve_in_thread({"breast_cancer": classifier.path / "model.onnx"}, delay_s=2.0) as slow:
        rt = RemoteRuntime(remote_manifest(server_url(slow, protocol), protocol, timeout_s=0.2))
        with pytest.raises(RuntimeFault) as caught:
            await rt.run_async({"features": np.ones((1, 30), np.float32)})
    assert caught.value.code == "DEADLINE_EXCEEDED" and "0.2 s" in caught.value.message


def test_runtime_fault_survives_pickling_as_ray_sends_it() -> None:
    fault = pickle.loads(pickle.dumps(RuntimeFault("UNAVAILABLE", "down")))
    assert isinstance(fault, RuntimeFault) and (fault.code, fault.message) == ("UNAVAILABLE", "down")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("UNAVAILABLE", "UNAVAILABLE"),
        ("NOT_FOUND", "UNAVAILABLE"),
        ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
        ("RESOURCE_EXHAUSTED", "UNAVAILABLE"),
        ("INTERNAL", "INTERNAL"),
        ("UNKNOWN", "INTERNAL"),
        ("400", "INVALID_ARGUMENT"),
        ("404", "UNAVAILABLE"),
        ("503", "UNAVAILABLE"),
        ("504", "DEADLINE_EXCEEDED"),
        ("500", "INTERNAL"),
        ("", "INTERNAL"),
    ],
)
def test_remote_status_maps_onto_the_error_table(status: str, code: str) -> None:
    backend = RemoteBackend(url="h:1")
    fault = fault_for(remote_status(f"StatusCode.{status}" if status.isalpha() else status), "why", backend, "m")
    assert fault.code == code
    assert ("why" in fault.message) == (code == "INVALID_ARGUMENT")  # only refusals repeat the remote's words


@pytest.mark.parametrize(
    ("manifest", "error"),
    [
        ({"runtime": "remote"}, "needs a 'remote' block"),
        ({"runtime": "onnx", "remote": {"url": "h:1"}}, "only applies to runtime 'remote'"),
        ({"runtime": "remote", "remote": {"url": "grpc://h:1"}}, "without a scheme"),
        ({"runtime": "remote", "remote": {"url": "localhost"}}, "host:port"),
        ({"runtime": "remote", "remote": {"url": "h:1", "protocol": "kafka"}}, "protocol"),
    ],
)
def test_remote_manifest_is_validated(manifest: dict[str, object], error: str) -> None:
    doc = {"name": "m", "version": "1", "inputs": [], "outputs": [], **manifest}
    with pytest.raises(ValidationError, match=error):
        Manifest.model_validate(doc)


def test_remote_manifest_defaults() -> None:
    m = Manifest.model_validate(
        {"name": "m", "version": "1", "runtime": "remote", "remote": {"url": "h:8001"}, "inputs": [], "outputs": []}
    )
    assert m.remote == RemoteBackend(
        url="h:8001", protocol="grpc", model_name="", model_version="", timeout_s=30.0, tls=False
    )
    assert m.display_platform == "remote" and RemoteRuntime(m).model == "m"
