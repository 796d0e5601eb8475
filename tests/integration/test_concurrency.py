"""500 concurrent requests with distinct inputs each get their own correct answer (no mix-up in batching)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput

from tests.integration.conftest import RunningGateway, run_onnx

N = 500


def distinct_inputs(gw: RunningGateway) -> list[np.ndarray]:
    base = gw.reference_inputs()
    rng = np.random.default_rng(7)
    # 1-3 rows per request, each row a jittered training row: every request's answer is its own.
    return [
        (base[rng.integers(0, len(base), size=int(rng.integers(1, 4)))] * rng.uniform(0.8, 1.2, size=(1, 30))).astype(
            np.float32
        )
        for _ in range(N)
    ]


def test_500_concurrent_grpc_requests(gateway: RunningGateway) -> None:
    xs = distinct_inputs(gateway)

    async def main() -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(gateway.grpc)
        try:

            async def one(x: np.ndarray) -> np.ndarray:
                inp = InferInput("features", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = await client.infer("breast_cancer", [inp], model_version="1")
                return np.asarray(result.as_numpy("probabilities"))

            return await asyncio.gather(*(one(x) for x in xs))
        finally:
            await client.close()

    got = asyncio.run(main())
    for x, p in zip(xs, got, strict=True):
        np.testing.assert_allclose(p, run_onnx(gateway.repository, "1", x)["probabilities"], rtol=1e-5, atol=1e-7)


def test_500_concurrent_http_requests(gateway: RunningGateway) -> None:
    xs = distinct_inputs(gateway)

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=gateway.http_url, limits=limits, timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/v2/models/breast_cancer/versions/2/infer",
                        json={
                            "inputs": [
                                {"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
                            ],
                            "outputs": [{"name": "probabilities"}],
                        },
                    )
                    for x in xs
                )
            )

    for x, r in zip(xs, asyncio.run(main()), strict=True):
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, run_onnx(gateway.repository, "2", x)["probabilities"], rtol=1e-5, atol=1e-7)
