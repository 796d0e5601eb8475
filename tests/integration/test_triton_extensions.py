"""Triton's streaming, config, statistics and shared-memory calls, driven by stock tritonclient against the
session gateway (real Ray Serve, real gRPC/HTTP servers on loopback), plus hostile inputs on those surfaces."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from gateway._proto import inference_pb2 as pb
from tests.integration.conftest import FLOOD_QUEUE_ROWS, STALL_MARKER, RunningGateway, run_onnx

MODEL = "breast_cancer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _input(mod: Any, x: np.ndarray) -> Any:
    inp = mod.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_stream_infer_interleaved_good_and_bad(gateway: RunningGateway) -> None:
    x = gateway.reference_inputs()[:4]
    expected = run_onnx(gateway.repository, "1", x)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(gateway.grpc)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    n = 30
    for i in range(n):
        if i % 3 == 2:  # a bad one: a model the gateway does not serve, or a wrong input name
            bad = grpcclient.InferInput("nope" if i % 2 else "features", list(x.shape), "FP32")
            bad.set_data_from_numpy(x)
            client.async_stream_infer("no_such_model" if i % 2 == 0 else MODEL, [bad], request_id=f"bad-{i}")
        else:
            client.async_stream_infer(MODEL, [_input(grpcclient, x)], model_version="1", request_id=f"good-{i}")
    got = [results.get(timeout=60) for _ in range(n)]
    client.stop_stream()
    client.close()
    answers = {r.get_response().id: r for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert sorted(answers) == sorted(f"good-{i}" for i in range(n) if i % 3 != 2)
    assert len(errors) == n // 3
    assert any("NOT_FOUND" in e and "no_such_model" in e for e in errors), errors
    assert any("INVALID_ARGUMENT" in e and "nope" in e for e in errors), errors
    for r in answers.values():
        np.testing.assert_allclose(r.as_numpy("probabilities"), expected["probabilities"], rtol=1e-5, atol=1e-6)


@pytest.fixture
def channel(gateway: RunningGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as ch:
        yield ch


def test_stream_garbage_gets_errors_with_ids_and_the_stream_stays_up(
    gateway: RunningGateway, channel: grpc.Channel
) -> None:
    x = gateway.reference_inputs()[:1]
    good = pb.ModelInferRequest(model_name=MODEL, model_version="1", id="after-garbage")
    good.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    good.raw_input_contents.append(x.tobytes())
    short = pb.ModelInferRequest(model_name=MODEL, model_version="1", id="short")
    short.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    short.raw_input_contents.append(b"\0" * 7)
    call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    messages = [b"\xff\xff\xff garbage", short.SerializeToString(), good.SerializeToString()]
    replies = [pb.ModelStreamInferResponse.FromString(r) for r in call(iter(messages), timeout=60)]
    assert len(replies) == 3
    by_id = {r.infer_response.id: r for r in replies}
    assert "not a valid inference.ModelInferRequest" in by_id[""].error_message
    assert "INVALID_ARGUMENT" in by_id["short"].error_message
    assert by_id["after-garbage"].error_message == "" and len(by_id["after-garbage"].infer_response.outputs) == 2


def test_a_stream_that_never_reads_leaves_the_gateway_live(gateway: RunningGateway, channel: grpc.Channel) -> None:
    x = gateway.reference_inputs()[:8]  # the stream's bound (256) times 8 rows stays under the model's queue
    req = pb.ModelInferRequest(model_name=MODEL, model_version="1")
    req.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    raw = req.SerializeToString()

    def requests() -> Iterator[bytes]:
        for _ in range(5000):  # far more than the stream's bound: the gateway stops reading, answers pile nowhere
            yield raw

    call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    stuck = call(requests(), timeout=120)  # never read
    try:
        client = grpcclient.InferenceServerClient(gateway.grpc)
        for _ in range(3):  # others are served meanwhile
            result = client.infer(MODEL, [_input(grpcclient, x[:2])], model_version="1")
            assert result.as_numpy("label").shape == (2,)
        assert client.is_server_live()
        client.close()
    finally:
        stuck.cancel()


def test_model_config_over_both_doors(gateway: RunningGateway) -> None:
    g = grpcclient.InferenceServerClient(gateway.grpc)
    h = httpclient.InferenceServerClient(gateway.http)
    gc = g.get_model_config(MODEL, "1", as_json=True)["config"]
    hc = h.get_model_config(MODEL, "1")
    for c in (gc, hc):
        assert c["name"] == MODEL and c["platform"] == "onnxruntime_onnx" and c["backend"] == "onnxruntime"
        assert int(c["max_batch_size"]) == 256
        assert c["input"][0]["name"] == "features" and c["input"][0]["data_type"] == "TYPE_FP32"
        assert [int(d) for d in c["input"][0]["dims"]] == [30]
        assert [o["name"] for o in c["output"]] == ["probabilities", "label"]
        assert c["instance_group"][0]["kind"] == "KIND_CPU" and int(c["instance_group"][0]["count"]) == 1
        assert "dynamic_batching" in c and "all" in c["version_policy"]
    # A version on a GPU is reported as such; a model that does not exist is NOT_FOUND on both doors.
    assert g.get_model_config("echo", "2", as_json=True)["config"]["instance_group"][0]["kind"] == "KIND_GPU"
    with pytest.raises(InferenceServerException, match="unknown model"):
        g.get_model_config("no_such_model")
    assert httpx.get(f"{gateway.http_url}/v2/models/no_such_model/config").status_code == 404
    g.close()
    h.close()


def _stats(client: Any, mod: Any, version: str) -> dict[str, Any]:
    if mod is grpcclient:
        found: dict[str, Any] = client.get_inference_statistics(MODEL, version, as_json=True)
    else:
        found = client.get_inference_statistics(MODEL, version)
    (one,) = found["model_stats"]
    return one


def _count(stats: dict[str, Any], phase: str) -> int:
    return int(stats["inference_stats"].get(phase, {}).get("count", 0))


def test_statistics_change_by_exactly_n_after_n_requests(gateway: RunningGateway) -> None:
    x = gateway.reference_inputs()[:3]
    g = grpcclient.InferenceServerClient(gateway.grpc)
    h = httpclient.InferenceServerClient(gateway.http)
    before = _stats(h, httpclient, "1")
    n = 7
    for i in range(n):
        mod, c = (grpcclient, g) if i % 2 else (httpclient, h)
        c.infer(MODEL, [_input(mod, x)], model_version="1")
    with pytest.raises(InferenceServerException):
        bad = grpcclient.InferInput("features", [3, 29], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 29), np.float32))
        g.infer(MODEL, [bad], model_version="1")
    for mod, c in ((grpcclient, g), (httpclient, h)):
        after = _stats(c, mod, "1")
        assert _count(after, "success") - _count(before, "success") == n
        assert _count(after, "fail") - _count(before, "fail") == 1
        assert _count(after, "queue") - _count(before, "queue") == n
        assert _count(after, "compute_infer") - _count(before, "compute_infer") == n
        # Each request ran alone (one at a time): n executions of 3 rows.
        assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 3 * n
        assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == n
        assert int(after["last_inference"]) > 0
        assert int(after["inference_stats"]["success"]["ns"]) > int(before["inference_stats"]["success"]["ns"])
    every = h.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} >= {(MODEL, "1"), (MODEL, "2"), ("faulty", "1")}
    assert httpx.get(f"{gateway.http_url}/v2/models/no_such_model/stats").status_code == 404
    g.close()
    h.close()


@pytest.mark.parametrize("mod", [grpcclient, httpclient], ids=["grpc", "http"])
def test_shared_memory_infer_matches_the_unary_answer(gateway: RunningGateway, mod: Any) -> None:
    x = gateway.reference_inputs()[:5]
    client = mod.InferenceServerClient(gateway.grpc if mod is grpcclient else gateway.http)
    unary = client.infer(MODEL, [_input(mod, x)], model_version="1")
    tag = uuid.uuid4().hex[:8]
    in_size, out_size = x.nbytes, 5 * 2 * 4
    ins = shm.create_shared_memory_region(f"in-{tag}", f"/gw-in-{tag}", in_size)
    outs = shm.create_shared_memory_region(f"out-{tag}", f"/gw-out-{tag}", 64 + out_size)
    try:
        shm.set_shared_memory_region(ins, [x])
        client.register_system_shared_memory(f"in-{tag}", f"/gw-in-{tag}", in_size)
        client.register_system_shared_memory(f"out-{tag}", f"/gw-out-{tag}", 64 + out_size)
        status = client.get_system_shared_memory_status(f"in-{tag}")
        assert f"/gw-in-{tag}" in str(status)
        inp = mod.InferInput("features", list(x.shape), "FP32")
        inp.set_shared_memory(f"in-{tag}", in_size)
        probs = mod.InferRequestedOutput("probabilities")
        probs.set_shared_memory(f"out-{tag}", out_size, offset=64)
        label = mod.InferRequestedOutput("label")
        result = client.infer(MODEL, [inp], model_version="1", outputs=[probs, label])
        got = shm.get_contents_as_numpy(outs, np.float32, [5, 2], offset=64)
        np.testing.assert_array_equal(got, unary.as_numpy("probabilities"))
        np.testing.assert_array_equal(result.as_numpy("label"), unary.as_numpy("label"))

        # Hostile: out of the region's bounds, an unknown region, an unknown key, a duplicate name.
        past = mod.InferInput("features", list(x.shape), "FP32")
        past.set_shared_memory(f"in-{tag}", in_size, offset=8)
        with pytest.raises(InferenceServerException, match="outside region"):
            client.infer(MODEL, [past], model_version="1")
        unknown = mod.InferInput("features", list(x.shape), "FP32")
        unknown.set_shared_memory("no-such-region", in_size)
        with pytest.raises(InferenceServerException, match="no shared memory region named 'no-such-region'"):
            client.infer(MODEL, [unknown], model_version="1")
        with pytest.raises(InferenceServerException, match="does not exist on this host"):
            client.register_system_shared_memory(f"missing-{tag}", f"/gw-missing-{tag}", 16)
        with pytest.raises(InferenceServerException, match="past the end"):
            client.register_system_shared_memory(f"big-{tag}", f"/gw-in-{tag}", in_size, offset=1)
        with pytest.raises(InferenceServerException, match="already registered"):
            client.register_system_shared_memory(f"in-{tag}", f"/gw-in-{tag}", in_size)
        with pytest.raises(InferenceServerException, match="not a valid shm_open name"):
            client.register_system_shared_memory(f"evil-{tag}", "/../../etc/passwd", 16)
        with pytest.raises(InferenceServerException, match="not supported on this node"):
            client.register_cuda_shared_memory(f"cuda-{tag}", b"AAAA", 0, 16)
        assert client.is_server_live()
    finally:
        client.unregister_system_shared_memory(f"in-{tag}")
        client.unregister_system_shared_memory(f"out-{tag}")
        shm.destroy_shared_memory_region(ins)
        shm.destroy_shared_memory_region(outs)
    assert f"in-{tag}" not in str(client.get_system_shared_memory_status())
    client.close()


def test_unserved_triton_calls_say_so(gateway: RunningGateway) -> None:
    g = grpcclient.InferenceServerClient(gateway.grpc)
    with pytest.raises(InferenceServerException, match="not served by this gateway"):
        g.get_trace_settings()
    # Repository control is off on the session gateway: load/unload say how to turn it on.
    with pytest.raises(InferenceServerException, match=r"model control is off|admin token"):
        g.load_model(MODEL)
    g.close()


def test_a_full_batcher_answers_overloaded_on_the_stream_and_the_stream_goes_on(
    gateway: RunningGateway, channel: grpc.Channel
) -> None:
    def request(i: int, value: float) -> bytes:
        req = pb.ModelInferRequest(model_name="flood", id=str(i))
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
        return bytes(req.SerializeToString())

    # The marker holds the only dispatch slot for 0.5 s; the 40 behind it overflow the 8-row queue.
    burst = [request(0, STALL_MARKER), *(request(i, 1.0) for i in range(1, 41))]
    call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    replies = [pb.ModelStreamInferResponse.FromString(r) for r in call(iter(burst), timeout=60)]
    assert sorted(int(r.infer_response.id) for r in replies) == list(range(41))
    refused = [r for r in replies if r.error_message]
    assert refused and all(r.error_message.startswith("[UNAVAILABLE]") for r in refused)
    assert all("overloaded" in r.error_message for r in refused)
    assert len(replies) - len(refused) >= FLOOD_QUEUE_ROWS
