"""Every answered request is in the request log: N requests in (errors included), exactly N records out."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.request_log import RequestLogReader
from tests.integration.conftest import RunningGateway


def test_n_requests_in_n_records_out(gateway: RunningGateway) -> None:
    tag = uuid.uuid4().hex[:8]
    x = gateway.reference_inputs()[:2]
    sent: dict[str, dict[str, object]] = {}
    grpc_client = grpcclient.InferenceServerClient(gateway.grpc)
    http_client = httpclient.InferenceServerClient(gateway.http)
    for i, (mod, client) in enumerate([(grpcclient, grpc_client), (httpclient, http_client)] * 3):
        rid = f"{tag}-ok-{i}"
        inp = mod.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x * (1 + i / 10))
        result = client.infer("breast_cancer", [inp], model_version="1", request_id=rid)
        sent[rid] = {
            "code": "OK",
            "x": x * (1 + i / 10),
            "label": result.as_numpy("label"),
            "protocol": "grpc" if mod is grpcclient else "http",
        }
    faults = [
        ("breast_cancer", None, [1, 29], "INVALID_ARGUMENT"),
        ("breast_cancer", "9", [1, 30], "NOT_FOUND"),
        ("faulty", None, [1, 4], "INTERNAL"),
    ]
    for j, (model, version, shape, code) in enumerate(faults):
        rid = f"{tag}-err-{j}"
        name = "x" if model == "faulty" else "features"
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        r = httpx.post(
            gateway.http_url + path,
            json={
                "id": rid,
                "inputs": [{"name": name, "datatype": "FP32", "shape": shape, "data": [-1.0] * int(np.prod(shape))}],
            },
        )
        assert r.status_code >= 400
        sent[rid] = {"code": code}

    # Default durability: a record is written to the OS before its response leaves, so it is already readable.
    records = [r for r in RequestLogReader(gateway.request_log) if str(r["request_id"]).startswith(tag)]
    assert sorted(r["request_id"] for r in records) == sorted(sent)
    for rec in records:
        want = sent[rec["request_id"]]
        assert rec["code"] == want["code"], rec
        if want["code"] != "OK":
            assert rec["error"] and rec["outputs"] == []
            continue
        assert (rec["model"], rec["version"], rec["role"], rec["protocol"]) == (
            "breast_cancer",
            "1",
            "pinned",
            want["protocol"],
        )
        got_in = {t["name"]: t for t in rec["inputs"]}["features"]
        np.testing.assert_allclose(
            np.asarray(got_in["data"], np.float32).reshape(got_in["shape"]), want["x"], rtol=1e-6
        )
        got_out = {t["name"]: t for t in rec["outputs"]}["label"]
        np.testing.assert_array_equal(np.asarray(got_out["data"]).reshape(got_out["shape"]), want["label"])
        assert rec["total_ms"] >= rec["model_ms"] > 0 and rec["batch_rows"] >= 2 and rec["client"]
