"""Feedback through the real gateway: predictions, then their labels posted back by request id, then both streams
read from disk and joined, as the retraining job joins them."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.feedback import latest_labels, read_feedback
from gateway.request_log import RequestLogReader
from serving.retrain_data import load_labelled
from tests.integration.conftest import RunningGateway

MODEL = "breast_cancer"


def test_predictions_and_their_labels_join_by_request_id(gateway: RunningGateway) -> None:
    tag = uuid.uuid4().hex[:8]
    x = gateway.reference_inputs()[:6]
    predicted: dict[str, list[int]] = {}
    grpc_client = grpcclient.InferenceServerClient(gateway.grpc)
    http_client = httpclient.InferenceServerClient(gateway.http)
    for i, (mod, client) in enumerate([(grpcclient, grpc_client), (httpclient, http_client)]):
        rows = x[i * 2 : i * 2 + 2]
        inp = mod.InferInput("features", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        rid = f"{tag}-{i}"
        result = client.infer(MODEL, [inp], request_id=rid)
        predicted[rid] = result.as_numpy("label").tolist()
    # A request that brings no id learns the one the gateway gave it from the answer.
    r = httpx.post(
        f"{gateway.http_url}/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": x[5].tolist()}]},
    )
    assert r.status_code == 200
    given = r.json()["id"]
    predicted[given] = [int({o["name"]: o for o in r.json()["outputs"]}["label"]["data"][0])]

    # Labels: the truth says the model was right on the first request and wrong on the others.
    truth = {rid: (labels if n == 0 else [1 - v for v in labels]) for n, (rid, labels) in enumerate(predicted.items())}
    first, *rest = truth
    r = httpx.post(f"{gateway.http_url}/v2/models/{MODEL}/feedback", json={"request_id": first, "label": truth[first]})
    assert r.status_code == 200 and r.json() == {"model": MODEL, "accepted": 1}, r.text
    batch = [
        {"request_id": rid, "label": labels if len(labels) > 1 else labels[0]}
        for rid in rest
        for labels in [truth[rid]]
    ]
    r = httpx.post(f"{gateway.http_url}/v2/models/{MODEL}/feedback", json={"items": batch})
    assert r.status_code == 200 and r.json() == {"model": MODEL, "accepted": 2}, r.text

    # Answered only once written: both streams are readable now, each in its own files.
    requests = {r["request_id"]: r for r in RequestLogReader(gateway.request_log) if r["request_id"] in truth}
    feedback = latest_labels(f for f in read_feedback(gateway.request_log, MODEL) if f["request_id"] in truth)
    assert set(requests) == set(feedback) == set(truth)
    assert all("label" not in r for r in RequestLogReader(gateway.request_log))
    for rid, rec in requests.items():
        got = feedback[rid]["label"]
        assert (got if isinstance(got, list) else [got]) == truth[rid]
        logged = {t["name"]: t for t in rec["outputs"]}["label"]["data"]
        assert logged == predicted[rid]
        assert feedback[rid]["kind"] == "feedback" and feedback[rid]["protocol"] == "http"
        assert feedback[rid]["time"] >= rec["time"]

    # The retraining job's join sees the same rows: 2 + 2 + 1, labelled with the truth.
    data = load_labelled(gateway.request_log, MODEL, "features", 30, 2, since=0.0, until=2e9, max_rows=10**6)
    mine = [i for i, rid in enumerate(data.request_ids) if rid in truth]
    assert [data.request_ids[i] for i in mine] == [rid for rid in truth for _ in truth[rid]]
    assert data.y[mine].tolist() == [v for rid in truth for v in truth[rid]]
    np.testing.assert_allclose(data.x[mine], np.vstack([x[0:4], x[5:6]]), rtol=1e-6)

    metrics = httpx.get(gateway.metrics).text
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith("gateway_feedback_records_total{") and f'model="{MODEL}"' in ln and 'code="OK"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3


def test_feedback_faults_through_the_real_server(gateway: RunningGateway) -> None:
    url = f"{gateway.http_url}/v2/models"
    r = httpx.post(f"{url}/no_such_model/feedback", json={"request_id": "a", "label": 1})
    assert r.status_code == 404 and "unknown model 'no_such_model'" in r.json()["error"]
    r = httpx.post(f"{url}/{MODEL}/feedback", json={"request_id": "a"})
    assert r.status_code == 400 and "send 'request_id' and 'label'" in r.json()["error"]
    r = httpx.post(f"{url}/{MODEL}/feedback", json={"request_id": "a", "label": {"class": 1}})
    assert r.status_code == 400 and "feedback body field 'label'" in r.json()["error"]
    r = httpx.post(f"{url}/{MODEL}/feedback", content=b"x" * ((1 << 20) + 1))
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    r = httpx.get(f"{url}/{MODEL}/feedback")
    assert r.status_code == 405
