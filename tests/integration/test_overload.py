"""A full queue answers 'overloaded' at once (503 / UNAVAILABLE with a retry hint), never hangs, and the
gateway serves normally again as soon as the flood passes."""

from __future__ import annotations

import asyncio
import threading

import grpc
import httpx
import numpy as np

from gateway._proto import inference_pb2 as pb
from tests.integration.conftest import FLOOD_QUEUE_ROWS, STALL_MARKER, RunningGateway


def body(value: float) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}


def test_a_flood_beyond_the_queue_gets_503_at_once_and_nothing_hangs(gateway: RunningGateway) -> None:
    url = gateway.http_url + "/v2/models/flood/infer"
    # The marker request holds the only dispatch slot for 0.5 s; everything after it queues or is refused.
    stall = threading.Thread(target=lambda: httpx.post(url, json=body(STALL_MARKER), timeout=30), daemon=True)
    stall.start()

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as http:
            await asyncio.sleep(0.15)
            return await asyncio.gather(*(http.post(url, json=body(1.0)) for _ in range(60)))

    responses = asyncio.run(flood())
    stall.join(30)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert refused and codes.count(200) >= FLOOD_QUEUE_ROWS, codes
    assert all("overloaded" in r.json()["error"] and r.headers.get("retry-after") for r in refused)
    # After the flood a request is served at once, through both doors.
    with grpc.insecure_channel(gateway.grpc) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", response_deserializer=pb.ModelInferResponse.FromString
        )
        req = pb.ModelInferRequest(model_name="flood")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        assert call(req.SerializeToString(), timeout=10).model_name == "flood"
    assert httpx.post(url, json=body(2.0), timeout=10).json()["outputs"][0]["data"] == [2.0] * 4
