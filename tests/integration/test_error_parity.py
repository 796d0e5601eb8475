"""Every fault in the error table through both doors: the same (HTTP status, gRPC code) pair for each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gateway._proto import inference_pb2 as pb
from tests.integration.conftest import ADMIN_TOKEN, MAX_REQUEST_BYTES, RunningGateway, TenantGateway


@dataclass(frozen=True)
class Fault:
    name: str
    http_status: int
    grpc_code: grpc.StatusCode
    model: str
    version: str | None
    inputs: list[dict[str, Any]]  # name, datatype, shape, array
    message: str  # a fragment both doors' messages must contain
    raw_body: bytes | None = None  # sent as-is instead of a well-formed request


def feat(shape: list[int], datatype: str = "FP32", count: int | None = None, name: str = "features") -> dict[str, Any]:
    n = int(np.prod(shape)) if count is None else count
    dtype = {"FP32": np.float32, "FP64": np.float64}[datatype]
    return {"name": name, "datatype": datatype, "shape": shape, "array": np.ones(n, dtype=dtype)}


FAULTS = [
    Fault("unknown model", 404, grpc.StatusCode.NOT_FOUND, "no_such_model", None, [feat([1, 30])], "no_such_model"),
    Fault("unknown version", 404, grpc.StatusCode.NOT_FOUND, "breast_cancer", "9", [feat([1, 30])], "version '9'"),
    Fault(
        "wrong datatype",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "breast_cancer",
        None,
        [feat([1, 30], "FP64")],
        "expects FP32",
    ),
    Fault("wrong shape", 400, grpc.StatusCode.INVALID_ARGUMENT, "breast_cancer", None, [feat([1, 29])], "[-1, 30]"),
    Fault(
        "element count mismatch",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "breast_cancer",
        None,
        [feat([2, 30], count=59)],
        "features",
    ),
    Fault("missing input", 400, grpc.StatusCode.INVALID_ARGUMENT, "breast_cancer", None, [], "missing input"),
    Fault(
        "unknown input",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "breast_cancer",
        None,
        [feat([1, 30]), feat([1, 30], name="extra")],
        "'extra'",
    ),
    Fault(
        "undecodable body",
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "breast_cancer",
        None,
        [],
        "",
        raw_body=b"\xff\x00 not a request {",
    ),
    Fault(
        "tensor over the element cap",
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "breast_cancer",
        None,
        [feat([1 << 40, 30], count=30)],
        "over the limit",
    ),
    Fault(
        "request over the size limit",
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "breast_cancer",
        None,
        [feat([MAX_REQUEST_BYTES // 120 + 8, 30])],
        "",
    ),
    Fault(
        "model raises",
        500,
        grpc.StatusCode.INTERNAL,
        "faulty",
        None,
        [{"name": "x", "datatype": "FP32", "shape": [1, 4], "array": -np.ones(4, np.float32)}],
        "ValueError",
    ),
    Fault(
        "no ready replica",
        503,
        grpc.StatusCode.UNAVAILABLE,
        "echo",
        "2",
        [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "array": np.ones(16, np.float32)}],
        "GPU",
    ),
]


def http_call(gw: RunningGateway, f: Fault, extra: dict[str, str] | None = None) -> tuple[int, str]:
    path = f"/v2/models/{f.model}" + (f"/versions/{f.version}" if f.version else "") + "/infer"
    if f.raw_body is not None:
        body, headers = f.raw_body, {"content-type": "application/json"}
    else:
        header = {
            "inputs": [
                {
                    "name": i["name"],
                    "datatype": i["datatype"],
                    "shape": i["shape"],
                    "parameters": {"binary_data_size": i["array"].nbytes},
                }
                for i in f.inputs
            ]
        }
        import orjson

        head = orjson.dumps(header)
        body = head + b"".join(i["array"].tobytes() for i in f.inputs)
        headers = {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}
    r = httpx.post(gw.http_url + path, content=body, headers={**headers, **(extra or {})}, timeout=30)
    assert r.headers["content-type"] == "application/json"
    return r.status_code, r.json().get("error", "")


def grpc_call(gw: RunningGateway, f: Fault, extra: dict[str, str] | None = None) -> tuple[grpc.StatusCode, str]:
    if f.raw_body is not None:
        payload = f.raw_body
    else:
        req = pb.ModelInferRequest(model_name=f.model, model_version=f.version or "")
        for i in f.inputs:
            req.inputs.add(name=i["name"], datatype=i["datatype"], shape=i["shape"])
            req.raw_input_contents.append(i["array"].tobytes())
        payload = req.SerializeToString()
    with grpc.insecure_channel(gw.grpc, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call: Callable[..., Any] = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(payload, timeout=30, metadata=tuple((extra or {}).items()))
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    raise AssertionError("the gRPC call succeeded")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_same_fault_same_code_through_both_doors(gateway: RunningGateway, fault: Fault) -> None:
    status, http_message = http_call(gateway, fault)
    code, grpc_message = grpc_call(gateway, fault)
    assert (status, code) == (fault.http_status, fault.grpc_code), (http_message, grpc_message)
    assert fault.message in http_message and fault.message in grpc_message, (http_message, grpc_message)
    if fault.http_status == 500:
        assert "Traceback" not in http_message and "negative input" not in http_message


def test_a_small_request_succeeds_right_after_a_huge_one_is_refused(gateway: RunningGateway) -> None:
    huge = FAULTS[[f.name for f in FAULTS].index("request over the size limit")]
    assert http_call(gateway, huge)[0] == 413
    ok = httpx.post(
        gateway.http_url + "/v2/models/breast_cancer/infer",
        timeout=30,
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [0.5] * 30}]},
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/breast_cancer/infer", 405),
        ("POST", "/v2/health/live", 405),
        ("GET", "/v3/whatever", 404),
        ("GET", "/v2/models/no_such_model", 404),
    ],
)
def test_http_routing_errors(gateway: RunningGateway, method: str, path: str, status: int) -> None:
    r = httpx.request(method, gateway.http_url + path)
    assert r.status_code == status and "error" in r.json()


def test_tenant_refusals_agree_through_both_doors(gateway: RunningGateway, tenant_gateway: TenantGateway) -> None:
    """No key: 401 / UNAUTHENTICATED; over its rate: 429 / RESOURCE_EXHAUSTED, while an oversized request of
    the same tenant is still 413 / RESOURCE_EXHAUSTED (the one table tells the two apart)."""
    added = httpx.post(
        f"{tenant_gateway.admin_url}/admin/tenants/parity",
        json={"requests_per_s": 0.01},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    key = added.json()["key"]
    tg = RunningGateway(
        tenant_gateway.http_url.removeprefix("http://"), tenant_gateway.grpc, "", gateway.repository,
        gateway.log, gateway.request_log, gateway.ray_address, tenant_gateway.admin_url,
    )  # fmt: skip
    request = Fault("well formed", 0, grpc.StatusCode.OK, "breast_cancer", None, [feat([1, 30])], "")
    no_key = (http_call(tg, request), grpc_call(tg, request))
    assert (no_key[0][0], no_key[1][0]) == (401, grpc.StatusCode.UNAUTHENTICATED), no_key
    assert "missing API key" in no_key[0][1] and "missing API key" in no_key[1][1]
    headers = {"x-api-key": key}
    first = http_call(tg, request, headers)  # the bucket's one token: answered
    assert first[0] == 200, first
    over = (http_call(tg, request, headers), grpc_call(tg, request, headers))
    assert (over[0][0], over[1][0]) == (429, grpc.StatusCode.RESOURCE_EXHAUSTED), over
    assert "over its rate" in over[0][1] and "over its rate" in over[1][1]
    big = next(f for f in FAULTS if f.name == "tensor over the element cap")
    assert (
        http_call(tg, big, headers)[0] == 413 and grpc_call(tg, big, headers)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    )
