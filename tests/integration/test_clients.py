"""Stock Triton/KServe clients against a running gateway: health, metadata, inference, version pinning."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway._proto import inference_pb2 as pb
from gateway._proto import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import RunningGateway, run_onnx

MODEL = "breast_cancer"


def clients(gw: RunningGateway) -> list[tuple[object, object]]:
    return [
        (grpcclient, grpcclient.InferenceServerClient(gw.grpc)),
        (httpclient, httpclient.InferenceServerClient(gw.http)),
    ]


def test_health_metadata_and_index(gateway: RunningGateway) -> None:
    for mod, c in clients(gateway):
        assert c.is_server_live() and c.is_server_ready(), mod.__name__
        assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1") and c.is_model_ready(MODEL, "2")
        md = c.get_model_metadata(MODEL, as_json=True) if mod is grpcclient else c.get_model_metadata(MODEL)
        assert md["name"] == MODEL and md["versions"] == ["1", "2"] and md["platform"] == "onnxruntime_onnx"
        assert md["inputs"] == [
            {"name": "features", "datatype": "FP32", "shape": ["-1", "30"] if mod is grpcclient else [-1, 30]}
        ]
        assert [o["name"] for o in md["outputs"]] == ["probabilities", "label"]
        server = c.get_server_metadata(as_json=True) if mod is grpcclient else c.get_server_metadata()
        assert "binary_tensor_data" in server["extensions"]
        index = c.get_model_repository_index(as_json=True) if mod is grpcclient else c.get_model_repository_index()
        rows = index["models"] if mod is grpcclient else index
        states = {(r["name"], r["version"]): (r.get("state"), r.get("reason", "")) for r in rows}
        assert states[(MODEL, "1")][0] == "READY" and states[("faulty", "1")][0] == "READY"
        # A version asking for an accelerator no node offers is reported, with the reason, not hung.
        assert states[("echo", "2")][0] == "UNAVAILABLE" and "GPU" in states[("echo", "2")][1]
        assert not c.is_model_ready("echo", "2") and c.is_model_ready("echo")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("version", ["1", "2", None])
def test_tritonclient_infer_matches_the_model(gateway: RunningGateway, version: str | None, binary: bool) -> None:
    x = gateway.reference_inputs()[:5]
    expected = run_onnx(gateway.repository, version or "2", x)
    for mod, c in clients(gateway):
        inp = mod.InferInput("features", list(x.shape), "FP32")
        if mod is httpclient:
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [mod.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
        else:
            inp.set_data_from_numpy(x)
            outs = [mod.InferRequestedOutput(n) for n in ("probabilities", "label")]
        result = c.infer(MODEL, [inp], model_version=version or "", outputs=outs, request_id="r-42")
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
        response = result.get_response(as_json=True) if mod is grpcclient else result.get_response()
        # Every response names the version that answered; unpinned goes to the newest ready version.
        assert response["model_version"] == (version or "2")
        assert response["id"] == "r-42"


def test_requested_output_subset(gateway: RunningGateway) -> None:
    x = gateway.reference_inputs()[:2]
    c = httpclient.InferenceServerClient(gateway.http)
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = c.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]


def test_raw_stub_with_typed_contents(gateway: RunningGateway) -> None:
    x = gateway.reference_inputs()[:3]
    expected = run_onnx(gateway.repository, "1", x)
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name=MODEL, model_version="1")
        t = req.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req)
        assert resp.model_version == "1"
        names = [o.name for o in resp.outputs]
        probabilities = np.frombuffer(resp.raw_output_contents[names.index("probabilities")], np.float32)
        np.testing.assert_allclose(probabilities.reshape(3, 2), expected["probabilities"], rtol=1e-6)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listed = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for r in listed for s in r.list_services_response.service}
        assert "inference.GRPCInferenceService" in services and "grpc.health.v1.Health" in services


def test_plain_http_json(gateway: RunningGateway) -> None:
    x = gateway.reference_inputs()[:2]
    expected = run_onnx(gateway.repository, "1", x)
    body = {"id": "plain", "inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 30], "data": x.tolist()}]}
    with httpx.Client(base_url=gateway.http_url) as http:
        r = http.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert r.json()["model_version"] == "1" and r.headers["x-model-version"] == "1"
        np.testing.assert_allclose(
            np.array(out["probabilities"]["data"]).reshape(2, 2), expected["probabilities"], rtol=1e-6
        )
        assert out["label"]["shape"] == [2] and out["label"]["datatype"] == "INT64"
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get(f"/v2/models/{MODEL}/versions/2").json()["versions"] == ["2"]
        assert http.get("/v2/models/echo/versions/2/ready").status_code == 503
        metrics = httpx.get(gateway.metrics).text
        assert 'gateway_inference_requests_total{code="OK",model="breast_cancer",version="1"}' in metrics
        assert 'gateway_model_ready{model="echo",version="2"} 0.0' in metrics
