"""Hostile input at the HTTP door: property tests of body parsing (JSON and the binary extension), paths,
methods and headers (never a 500, every error from the table), the header-size cap on a real socket, the
rows-per-request check before decoding, and the manifest's NaN/Inf policy."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.manifest import Batching, Manifest, TensorSpecModel
from gateway.core import DataPlane
from gateway.doors.asgi import limited_http_protocol
from gateway.doors.http import HttpDoor
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.settings import BatchingOverride
from tests.unit.test_http_door import FakeDispatcher, versions
from tests.unit.test_tls import asgi_server

# Statuses malformed input may get: bad request, unknown model/route, wrong method, too large, and 504 for
# a timeout header that has already run out. Never 500.
CLIENT_STATUSES = {400, 404, 405, 413, 504}
FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
MAX_ROWS = 64


def fuzz_versions() -> list[VersionInfo]:
    strict = Manifest(
        name="strict",
        version="1",
        runtime="array",
        nan_policy="reject",
        inputs=[TensorSpecModel(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[TensorSpecModel(name="y", datatype="FP32", shape=[-1, 2])],
        batching=Batching(max_batch_size=8),
    )
    info = VersionInfo.from_manifest(strict, BatchingOverride())
    info.state = "READY"
    return [*versions(), info]


class Door:
    """One event loop and one door for many examples (hypothesis runs sync test functions)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.plane = DataPlane(Catalog(fuzz_versions()), FakeDispatcher())
        door = HttpDoor(
            self.plane, max_body_bytes=1 << 14, max_elements=1 << 12, default_timeout_s=10.0, max_rows=MAX_ROWS
        )
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw")

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, path, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.plane.close())
        self.loop.close()


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    d = Door()
    yield d
    d.close()


def check(r: httpx.Response) -> None:
    assert r.status_code == 200 or r.status_code in CLIENT_STATUSES, (r.status_code, r.text)
    if r.status_code != 200:
        body = r.json()
        assert list(body) == ["error"] and body["error"], body


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=30,
)
names = st.sampled_from(["x", "y", "", "X", "features"])
datatypes = st.one_of(st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "BOOL", "UINT8"]), st.text(max_size=5))
shapes = st.one_of(st.lists(st.integers(-2, 5), max_size=3), st.lists(st.integers(0, 2**62), max_size=3), json_values)
inputs = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-4, 64), json_scalars)}), json_values
        ),
    },
)
bodies = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(inputs, max_size=3), json_values)},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values},
)
models = st.sampled_from(["m", "strict", "t_bytes", "t_fp16", "nope", "m/versions/1", "m/versions/9"])


@FUZZ
@given(models, st.one_of(bodies, json_values))
def test_json_bodies_get_an_answer_or_a_client_error(door: Door, model: str, body: Any) -> None:
    check(door.request("POST", f"/v2/models/{model}/infer", content=json.dumps(body).encode()))


@FUZZ
@given(models, bodies, st.binary(max_size=96), st.one_of(st.none(), st.integers(-5, 400), st.text(max_size=4)))
def test_binary_bodies_get_an_answer_or_a_client_error(
    door: Door, model: str, header: Any, blob: bytes, declared: int | str | None
) -> None:
    head = json.dumps(header).encode()
    length = str(len(head)) if declared is None else str(declared)
    check(
        door.request(
            "POST",
            f"/v2/models/{model}/infer",
            content=head + blob,
            headers={"inference-header-content-length": length.encode()},
        )
    )


@FUZZ
@given(
    st.binary(max_size=300), st.sampled_from(["/v2/models/m/infer", "/v2/repository/index", "/v2/models/t_bytes/infer"])
)
def test_random_bytes_get_a_client_error(door: Door, raw: bytes, path: str) -> None:
    check(door.request("POST", path, content=raw))


@FUZZ
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
    st.lists(
        st.sampled_from(
            [
                "v2",
                "models",
                "m",
                "versions",
                "1",
                "infer",
                "ready",
                "health",
                "live",
                "repository",
                "index",
                "",
                "..",
                "%00",
            ]
        ),
        max_size=6,
    ),
    st.dictionaries(
        st.sampled_from(["x-timeout-ms", "traceparent", "tracestate", "x-routing-key", "content-length-ish"]),
        st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=20),
        max_size=3,
    ),
)
def test_any_path_method_and_header_gets_a_defined_answer(
    door: Door, method: str, parts: list[str], headers: dict[str, str]
) -> None:
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    path = "/" + "/".join(parts)
    path = "/v2" + path if path.startswith("//") else path  # the client cannot send a path starting with //
    r = door.request(method, path, headers=encoded, content=b"{}" if method != "GET" else None)
    assert r.status_code in {200, 503} | CLIENT_STATUSES, (r.status_code, r.text)  # 503: 'loading' not ready


# --- limits checked before decoding --------------------------------------------------------------


def test_rows_over_the_gateway_limit_are_refused_before_decoding(door: Door) -> None:
    # No data at all: had the door decoded first, it would complain about the missing data instead.
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [MAX_ROWS + 1, 0]}]}
    r = door.request("POST", "/v2/models/t_fp32/infer", json=body)
    assert r.status_code == 413 and f"limit of {MAX_ROWS} rows" in r.json()["error"]


def test_rows_over_the_models_batch_size_are_refused_before_decoding(door: Door) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [9, 2]}]}  # m batches at most 8
    r = door.request("POST", "/v2/models/m/versions/1/infer", json=body)
    assert r.status_code == 400 and "batch size 9 is outside 1..8" in r.json()["error"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_policy_reject_names_the_input(door: Door, value: float) -> None:
    x = np.array([[1.0, value]], np.float32)
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": x.nbytes}}]}
    )
    headers = {"inference-header-content-length": str(len(head))}
    r = door.request("POST", "/v2/models/strict/infer", content=head + x.tobytes(), headers=headers)
    assert r.status_code == 400 and "input 'x' holds NaN or infinite values" in r.json()["error"]
    ok = door.request(
        "POST",
        "/v2/models/t_fp32/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]},
    )
    assert ok.status_code == 200
    # The default policy passes them through to the model.
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": x.nbytes}}]}
    )
    r = door.request("POST", "/v2/models/m/infer", content=head + x.tobytes(), headers=headers)
    assert r.status_code == 200


# --- header size on a real socket ------------------------------------------------------------------


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" in b"".join(chunks).lower():
                break
        return b"".join(chunks)


@pytest.mark.parametrize("what", ["one long header", "many headers", "a long URL"])
async def test_headers_over_the_cap_get_431_and_the_server_keeps_serving(what: str) -> None:
    door = HttpDoor(
        DataPlane(Catalog(fuzz_versions()), FakeDispatcher()),
        max_body_bytes=1 << 14,
        max_elements=1 << 12,
        default_timeout_s=10.0,
    )
    async with asgi_server(door, http=limited_http_protocol(4096)) as port:
        if what == "one long header":
            head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n"
        elif what == "many headers":
            head = (
                b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n"
                + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50) for i in range(200))
                + b"\r\n"
            )
        else:
            head = b"GET /v2/health/live?q=" + b"a" * 8000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        answer = await asyncio.to_thread(raw_http, port, head)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"over the limit of 4096 bytes" in answer
        async with httpx.AsyncClient() as c:  # a normal request right after, with headers under the cap
            r = await c.get(f"http://127.0.0.1:{port}/v2/health/live", headers={"x-ok": "v" * 2000})
            assert r.json() == {"live": True}


def test_struct_is_little_endian() -> None:
    # The binary extension's BYTES elements carry a 4-byte little-endian length (used by the fuzzers above).
    assert struct.pack("<I", 1) == b"\x01\x00\x00\x00"
