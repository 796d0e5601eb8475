"""gateway.doors.http.HttpDoor as a plain ASGI app, driven by httpx over ASGITransport (no sockets, no Ray)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from contract.manifest import Batching, Manifest, TensorSpecModel
from gateway import codec
from gateway.core import DataPlane
from gateway.doors.http import HttpDoor
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.settings import BatchingOverride
from gateway.types import InferRequest, InferResponse

pytestmark = pytest.mark.asyncio

Arrays = dict[str, np.ndarray]
MAX_BODY = 64 * 1024
DATATYPES = list(codec.NUMPY_DTYPES)


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpecModel:
    return TensorSpecModel(name=name, datatype=datatype, shape=shape)


def versions() -> list[VersionInfo]:
    out = []
    for v in ("1", "2"):
        m = Manifest(
            name="m",
            version=v,
            runtime="array",
            inputs=[spec("x", "FP32", [-1, 2])],
            outputs=[spec("y", "FP32", [-1, 2]), spec("n", "INT64", [-1])],
            batching=Batching(max_batch_size=8),
        )
        out.append(VersionInfo.from_manifest(m, BatchingOverride()))
    out.append(
        VersionInfo.from_manifest(
            Manifest(
                name="loading",
                version="1",
                runtime="array",
                inputs=[spec("x", "FP32", [-1, 2])],
                outputs=[spec("y", "FP32", [-1, 2])],
            ),
            BatchingOverride(),
        )
    )
    for dt in DATATYPES:  # an identity model per datatype
        m = Manifest(
            name=f"t_{dt.lower()}",
            version="1",
            runtime="array",
            inputs=[spec("x", dt, [-1, 3])],
            outputs=[spec("y", dt, [-1, 3])],
            batching=Batching(enabled=dt != "BYTES"),
        )
        out.append(VersionInfo.from_manifest(m, BatchingOverride()))
    for info in out:
        if info.model != "loading":
            info.state, info.reason = "READY", ""
    return out


class FakeDispatcher:
    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        x = inputs["x"]
        if model == "m":
            return {"y": x * 2, "n": np.arange(len(x), dtype=np.int64) + 100 * int(version)}
        return {"y": x}


class SpyPlane(DataPlane):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.requests: list[InferRequest] = []

    async def infer(self, request: InferRequest) -> InferResponse:
        self.requests.append(request)
        return await super().infer(request)


@pytest.fixture
def plane() -> SpyPlane:
    return SpyPlane(Catalog(versions()), FakeDispatcher())


@pytest.fixture
async def client(plane: SpyPlane) -> AsyncIterator[httpx.AsyncClient]:
    door = HttpDoor(plane, max_body_bytes=MAX_BODY, max_elements=1 << 16, default_timeout_s=30.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        yield c
    await plane.close()


def error_of(r: httpx.Response, status: int) -> str:
    """Every error answers with exactly {"error": "<message>"}."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def binary_request(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(blobs), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def split_binary(r: httpx.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parses a binary-extension response into its JSON header and each binary output's bytes."""
    n = int(r.headers["inference-header-content-length"])
    header = orjson.loads(r.content[:n])
    blobs, pos = {}, n
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[out["name"]] = r.content[pos : pos + size]
            pos += size
    assert pos == len(r.content)
    return header, blobs


def x_input(rows: int = 2, **extra: Any) -> dict[str, Any]:
    data = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2).tolist()
    return {"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": data, **extra}


# --- health and metadata -----------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient, plane: SpyPlane) -> None:
    r = await client.get("/v2/health/live")
    assert r.status_code == 200 and r.json() == {"live": True}
    r = await client.get("/v2/health/ready")  # model 'loading' has no ready version yet
    assert r.status_code == 503 and r.json() == {"ready": False}
    plane.catalog.set_state("loading", "1", "READY")
    r = await client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    for info in plane.catalog.all():
        if info.model == "m":
            plane.catalog.set_state("m", info.version, "LOADING", "starting")
    r = await client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}
    plane.live = False
    r = await client.get("/v2/health/live")
    assert r.status_code == 503 and r.json() == {"live": False}


async def test_server_metadata(client: httpx.AsyncClient) -> None:
    for path in ("/v2", "/v2/"):
        r = await client.get(path)
        assert r.status_code == 200
        body = r.json()
        assert body["name"] == "model-gateway" and body["version"]
        assert "binary_tensor_data" in body["extensions"]


async def test_model_metadata(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/models/m")
    assert r.status_code == 200
    assert r.json() == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "numpy",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "n", "datatype": "INT64", "shape": [-1]},
        ],
    }
    r = await client.get("/v2/models/m/versions/1")
    assert r.status_code == 200 and r.json()["versions"] == ["1"]
    assert "'nope'" in error_of(await client.get("/v2/models/nope"), 404)
    assert "'7'" in error_of(await client.get("/v2/models/m/versions/7"), 404)


async def test_model_ready(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/models/m/ready")
    assert r.status_code == 200 and r.json() == {"name": "m", "ready": True}
    r = await client.get("/v2/models/m/versions/2/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    r = await client.get("/v2/models/loading/ready")
    assert r.status_code == 503 and r.json() == {"name": "loading", "ready": False}
    error_of(await client.get("/v2/models/nope/ready"), 404)
    error_of(await client.get("/v2/models/m/versions/9/ready"), 404)


async def test_repository_index(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/repository/index")
    assert r.status_code == 200
    names = {(e["name"], e["version"], e["state"]) for e in r.json()}
    assert ("m", "2", "READY") in names and ("loading", "1", "LOADING") in names
    r = await client.post("/v2/repository/index", json={"ready": True})
    assert all(e["state"] == "READY" for e in r.json()) and ("loading", "1") not in {
        (e["name"], e["version"]) for e in r.json()
    }
    error_of(await client.post("/v2/repository/index", content=b"{nope"), 400)


async def test_lifespan_protocol(plane: SpyPlane) -> None:
    door = HttpDoor(plane, max_body_bytes=MAX_BODY, max_elements=100, default_timeout_s=1.0)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await door({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- JSON inference ------------------------------------------------------------------------------


async def test_json_infer(client: httpx.AsyncClient, plane: SpyPlane) -> None:
    r = await client.post(
        "/v2/models/m/infer", json={"id": "req-7", "inputs": [x_input(2)]}, headers={"x-routing-key": "user-1"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["x-model-version"] == "2"
    body = r.json()
    assert body["model_name"] == "m" and body["model_version"] == "2" and body["id"] == "req-7"
    assert body["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0.0, 2.0, 4.0, 6.0]},
        {"name": "n", "datatype": "INT64", "shape": [2], "data": [200, 201]},
    ]
    req = plane.requests[-1]
    assert req.routing_key == "user-1" and req.id == "req-7" and req.version is None
    assert req.deadline is not None and req.deadline > req.received_at


async def test_json_infer_pinned_version_and_output_subset(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/m/versions/1/infer", json={"inputs": [x_input(1)], "outputs": [{"name": "n"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    # No id was sent: the gateway names the request so the client can refer to it later (logs, feedback).
    assert body["model_version"] == "1" and isinstance(body["id"], str) and body["id"]
    assert body["outputs"] == [{"name": "n", "datatype": "INT64", "shape": [1], "data": [100]}]


@pytest.mark.parametrize("datatype", DATATYPES)
async def test_json_round_trip_every_datatype(client: httpx.AsyncClient, datatype: str) -> None:
    if datatype == "BYTES":
        data: list[Any] = ["a", "", "héllo", "x", "y", "z"]
    elif datatype == "BOOL":
        data = [True, False, True, True, False, False]
    elif datatype.startswith("FP"):
        data = [0.5, -1.25, 0.0, 3.0, 100.5, -0.125]
    else:
        info = np.iinfo(codec.NUMPY_DTYPES[datatype])
        data = [int(info.min), int(info.max), 0, 1, 2, 3]
    r = await client.post(
        f"/v2/models/t_{datatype.lower()}/infer",
        json={"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": data}]},
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == datatype and out["shape"] == [2, 3] and out["data"] == data


@pytest.mark.parametrize("datatype", DATATYPES)
async def test_binary_round_trip_every_datatype(client: httpx.AsyncClient, datatype: str) -> None:
    if datatype == "BYTES":
        arr = np.array([b"a", b"", "h\u00e9".encode(), b"\x00\xff", b"y", b"zz"], dtype=np.object_).reshape(2, 3)
    else:
        arr = (np.arange(6) % 2).astype(codec.NUMPY_DTYPES[datatype]).reshape(2, 3)
    raw = codec.to_raw(arr, datatype)
    body, headers = binary_request(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        },
        raw,
    )
    r = await client.post(f"/v2/models/t_{datatype.lower()}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    header, blobs = split_binary(r)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    back = codec.from_raw("y", datatype, header["outputs"][0]["shape"], blobs["y"], 1 << 16)
    assert back.ravel().tolist() == arr.ravel().tolist()


# --- binary extension ------------------------------------------------------------------------------


async def test_binary_infer_with_mixed_outputs(client: httpx.AsyncClient, plane: SpyPlane) -> None:
    x = np.array([[1.5, -2.0], [3.0, 4.25], [0.0, 1.0]], dtype=np.float32)
    body, headers = binary_request(
        {
            "inputs": [
                {"name": "x", "shape": [3, 2], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "n"}],
        },
        x.tobytes(),
    )
    r = await client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, blobs = split_binary(r)
    y_entry, n_entry = header["outputs"]
    assert y_entry == {"name": "y", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": 24}}
    assert n_entry["data"] == [200, 201, 202] and "parameters" not in n_entry
    np.testing.assert_array_equal(np.frombuffer(blobs["y"], dtype="<f4").reshape(3, 2), x * 2)
    assert plane.requests[-1].outputs[0].binary is True and plane.requests[-1].outputs[1].binary is None


async def test_binary_and_json_inputs_mix(client: httpx.AsyncClient) -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in [b"ab", b"", b"c"])
    body, headers = binary_request(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]},
        raw,
    )
    r = await client.post("/v2/models/t_bytes/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    # No binary output asked for: a plain JSON answer.
    assert r.headers["content-type"] == "application/json"
    assert r.json()["outputs"][0]["data"] == ["ab", "", "c"]


async def test_binary_data_output_with_a_per_output_override(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/models/m/infer",
        json={
            "inputs": [x_input(2)],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "y"}, {"name": "n", "parameters": {"binary_data": False}}],
        },
    )
    assert r.status_code == 200, r.text
    header, blobs = split_binary(r)
    assert set(blobs) == {"y"}
    np.testing.assert_array_equal(np.frombuffer(blobs["y"], dtype="<f4"), [0.0, 2.0, 4.0, 6.0])
    assert header["outputs"][1]["data"] == [200, 201]


async def test_binary_data_output_false_is_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/models/m/infer", json={"inputs": [x_input(1)], "parameters": {"binary_data_output": False}}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers


# --- errors --------------------------------------------------------------------------------------


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = b"x" * (MAX_BODY + 1)
    assert "limit" in error_of(await client.post("/v2/models/m/infer", content=big), 413)


async def test_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    assert "limit" in error_of(await client.post("/v2/models/m/infer", content=chunks()), 413)


async def test_streamed_body_under_the_limit_is_read_whole(client: httpx.AsyncClient) -> None:
    payload = orjson.dumps({"inputs": [x_input(1)]})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 7):
            yield payload[i : i + 7]

    r = await client.post("/v2/models/m/infer", content=chunks())
    assert r.status_code == 200, r.text


async def test_tensor_over_the_element_cap_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1 << 40, 2], "datatype": "FP32", "data": []}]}
    )
    assert "'x'" in error_of(r, 413)


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    msg = error_of(await client.post("/v2/models/m/infer", content=b'{"inputs": [}'), 400)
    assert "JSON" in msg


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": "x"},
        {"inputs": [{"name": "x", "shape": "2", "datatype": "FP32"}]},
        {"inputs": [{"name": 3, "shape": [1], "datatype": "FP32", "data": [1]}]},
    ],
)
async def test_schema_violations_are_400_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert "inputs" in error_of(await client.post("/v2/models/m/infer", json=body), 400)


async def test_missing_data_is_400_naming_the_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32"}]})
    msg = error_of(r, 400)
    assert "'x'" in msg and "data" in msg


async def test_extra_binary_bytes_are_400(client: httpx.AsyncClient) -> None:
    x = np.zeros((1, 2), dtype=np.float32)
    body, headers = binary_request(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
        x.tobytes(),
        b"extra",
    )
    msg = error_of(await client.post("/v2/models/m/infer", content=body, headers=headers), 400)
    assert "5 bytes" in msg


async def test_binary_without_any_binary_input_is_400(client: httpx.AsyncClient) -> None:
    body, headers = binary_request({"inputs": [x_input(1)]}, b"\x00\x00")
    error_of(await client.post("/v2/models/m/infer", content=body, headers=headers), 400)


async def test_binary_size_past_the_end_is_400(client: httpx.AsyncClient) -> None:
    body, headers = binary_request(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]},
        bytes(8),
    )
    msg = error_of(await client.post("/v2/models/m/infer", content=body, headers=headers), 400)
    assert "'x'" in msg


async def test_binary_size_not_matching_the_shape_is_400(client: httpx.AsyncClient) -> None:
    body, headers = binary_request(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
        bytes(4),
    )
    assert "'x'" in error_of(await client.post("/v2/models/m/infer", content=body, headers=headers), 400)


@pytest.mark.parametrize("size", [-1, "8", 1.5, True])
async def test_bad_binary_data_size_is_400(client: httpx.AsyncClient, size: Any) -> None:
    body, headers = binary_request(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": size}}]},
        bytes(8),
    )
    assert "binary_data_size" in error_of(await client.post("/v2/models/m/infer", content=body, headers=headers), 400)


@pytest.mark.parametrize("value", ["abc", "9999999"])
async def test_bad_header_length_is_400(client: httpx.AsyncClient, value: str) -> None:
    r = await client.post(
        "/v2/models/m/infer",
        content=orjson.dumps({"inputs": [x_input(1)]}),
        headers={"Inference-Header-Content-Length": value},
    )
    assert "Inference-Header-Content-Length" in error_of(r, 400)


async def test_validation_errors_are_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
    )
    assert "'x'" in error_of(r, 400)
    r = await client.post("/v2/models/m/infer", json={"inputs": [x_input(1)], "outputs": [{"name": "nope"}]})
    assert "'nope'" in error_of(r, 400)


async def test_not_ready_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/loading/infer", json={"inputs": [x_input(1)]})
    assert "no ready version" in error_of(r, 503)
    assert int(r.headers["retry-after"]) >= 1


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    error_of(await client.post("/v2/models/nope/infer", json={"inputs": [x_input(1)]}), 404)
    error_of(await client.post("/v2/models/m/versions/5/infer", json={"inputs": [x_input(1)]}), 404)


async def test_timeout_header(client: httpx.AsyncClient, plane: SpyPlane) -> None:
    r = await client.post("/v2/models/m/infer", json={"inputs": [x_input(1)]}, headers={"x-timeout-ms": "0"})
    error_of(r, 504)
    r = await client.post("/v2/models/m/infer", json={"inputs": [x_input(1)]}, headers={"x-timeout-ms": "soon"})
    assert "x-timeout-ms" in error_of(r, 400)
    r = await client.post("/v2/models/m/infer", json={"inputs": [x_input(1)]}, headers={"x-timeout-ms": "250"})
    assert r.status_code == 200
    req = plane.requests[-1]
    assert req.deadline is not None and req.deadline - req.received_at == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/m/infer"),
        ("POST", "/v2/health/live"),
        ("PUT", "/v2"),
        ("POST", "/v2/models/m"),
        ("GET", "/v2/repository/index"),
        ("DELETE", "/v2/models/m/ready"),
    ],
)
async def test_wrong_method_is_405(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert "use" in error_of(await client.request(method, path), 405)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1/models",
        "/v2/nope",
        "/v2/health",
        "/v2/health/dead",
        "/v2/models",
        "/v2/models/m/versions",
        "/v2/models/m/explain",
        "/v2/models/m/versions/1/x/y",
    ],
)
async def test_unknown_path_is_404(client: httpx.AsyncClient, path: str) -> None:
    assert "no route" in error_of(await client.get(path), 404)


async def test_unexpected_exception_is_a_generic_500(plane: SpyPlane) -> None:
    class Broken(FakeDispatcher):
        async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
            return {"y": np.array([[object(), object()]], dtype=object), "n": np.zeros(1, dtype=np.int64)}

    broken = DataPlane(Catalog(versions()), Broken())
    door = HttpDoor(broken, max_body_bytes=MAX_BODY, max_elements=100, default_timeout_s=5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        r = await c.post("/v2/models/m/infer", json={"inputs": [x_input(1)]})
    assert error_of(r, 500) == "internal error in the gateway"  # no internals leak
