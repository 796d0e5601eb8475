"""Tenants on the real gateway: keys made with `gateway tenants`, a flooding tenant refused with retry hints
while a steady one is answered every time, and key rotation without a restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.cli import main
from tests.integration.conftest import ADMIN_TOKEN, RunningGateway, TenantGateway


def tenants_cli(tg: TenantGateway, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["tenants", "--admin", tg.admin_url, "--token", ADMIN_TOKEN, *args]) == 0
    return capsys.readouterr().out


def new_key(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("gk_"))


def http_infer(tg: TenantGateway, x: np.ndarray, key: str) -> httpx.Response:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return httpx.post(f"{tg.http_url}/v2/models/breast_cancer/infer", json=body, headers={"x-api-key": key}, timeout=30)


def test_a_flooding_tenant_gets_429s_and_the_steady_one_is_always_answered(
    gateway: RunningGateway, tenant_gateway: TenantGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tg = tenant_gateway
    flood_key = new_key(tenants_cli(tg, capsys, "add", "flooder", "--requests-per-s", "2", "--priority", "batch"))
    steady_key = new_key(tenants_cli(tg, capsys, "add", "steady", "--requests-per-s", "500"))
    listing = tenants_cli(tg, capsys, "list")
    assert "flooder" in listing and "steady" in listing and flood_key not in listing
    assert flood_key not in tg.tenants_file.read_text()  # only salted hashes at rest
    x = gateway.reference_inputs()[:1]

    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    # tritonclient.http runs on gevent, whose hub belongs to one thread: one client per flooding thread.
    local = threading.local()
    steady_client = grpcclient.InferenceServerClient(tg.grpc)
    ginp = grpcclient.InferInput("features", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)

    def flood_one(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(tg.http_url.removeprefix("http://"))
        try:
            local.client.infer("breast_cancer", [inp], headers={"x-api-key": flood_key})
            return 200
        except InferenceServerException as exc:
            return int(exc.status() or 0)

    def steady_one(_: int) -> Any:
        return steady_client.infer("breast_cancer", [ginp], headers={"x-api-key": steady_key}).as_numpy("probabilities")

    with ThreadPoolExecutor(8) as pool:
        flood = pool.map(flood_one, range(200))
        steady = [steady_one(i) for i in range(40)]  # interleaved with the flood
        statuses = list(flood)
    assert all(p is not None and p.shape == (1, 2) for p in steady)
    assert statuses.count(429) >= 150 and set(statuses) <= {200, 429}, statuses
    # The retry hints: retry-after on HTTP, grpc-retry-pushback-ms on gRPC.
    r = next(r for r in (http_infer(tg, x, flood_key) for _ in range(10)) if r.status_code != 200)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "flooder" in r.json()["error"]
    with pytest.raises(InferenceServerException) as refused:
        for _ in range(10):
            steady_client.infer("breast_cancer", [ginp], headers={"x-api-key": flood_key})
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    req = grpcclient.service_pb2.ModelInferRequest(model_name="breast_cancer")
    req.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(tg.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            for _ in range(10):  # the bucket holds one second of its rate: a few calls empty it
                call(req.SerializeToString(), metadata=(("x-api-key", flood_key),), timeout=10)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]) > 0
    metrics = httpx.get(tg.metrics, timeout=10).text
    assert 'priority="batch",reason="rate_limited",tenant="flooder"' in metrics


def test_keys_rotate_at_run_time(
    gateway: RunningGateway, tenant_gateway: TenantGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tg = tenant_gateway
    x = gateway.reference_inputs()[:1]
    old = new_key(tenants_cli(tg, capsys, "add", "rotating"))
    assert http_infer(tg, x, old).status_code == 200
    new = new_key(tenants_cli(tg, capsys, "rotate", "rotating"))
    assert http_infer(tg, x, new).status_code == 200
    refused = http_infer(tg, x, old)
    assert refused.status_code == 401 and "unknown API key" in refused.json()["error"]
    assert http_infer(tg, x, "").status_code == 401
    # The session gateway has keys off: the README's commands need none.
    plain = httpx.post(
        f"{gateway.http_url}/v2/models/breast_cancer/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": x.ravel().tolist()}]},
        timeout=30,
    )
    assert plain.status_code == 200
