"""The gRPC door's ModelStreamInfer and extensions on a real grpc.aio server with a fake dispatcher (no Ray)."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway._proto import inference_pb2 as pb
from gateway.core import DataPlane
from gateway.doors.grpc import GrpcDoor, InferenceServicer
from gateway.doors.grpc_extensions import ExtensionServicer
from gateway.doors.grpc_stream import StreamInfer, error_response, wrap_response
from tests.unit.test_core import FakeDispatcher, catalog

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


class SlowDispatcher(FakeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def infer(self, model: str, version: str, inputs: Any) -> Any:
        await self.release.wait()
        return await super().infer(model, version, inputs)


async def serve(plane: DataPlane, max_inflight: int = 8) -> tuple[GrpcDoor, str]:
    servicer = InferenceServicer(plane, 1 << 16, 10.0)
    stream = StreamInfer(InferenceServicer(plane, 1 << 16, 10.0, "x-routing-key", 65536), max_inflight)
    door = GrpcDoor(
        servicer, 1 << 20, stream=stream.handle, extensions=ExtensionServicer(plane, servicer._abort, "tok")
    )
    port = door.bind("127.0.0.1", 0)
    await door.start()
    return door, f"127.0.0.1:{port}"


def test_wrap_response_is_the_message_protobuf_would_build() -> None:
    inner = pb.ModelInferResponse(model_name="m" * 300, id="7")
    assert pb.ModelStreamInferResponse.FromString(wrap_response(inner.SerializeToString())).infer_response == inner
    err = pb.ModelStreamInferResponse.FromString(error_response("boom", "m", "1", "r9"))
    assert err.error_message == "boom" and err.infer_response.id == "r9"


async def test_tritonclient_stream_with_good_and_bad_requests() -> None:
    plane = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher())
    door, address = await serve(plane)

    def run() -> list[tuple[Any, Any]]:
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(address)
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        for i in range(20):
            inp = grpcclient.InferInput("x" if i % 4 else "z", [1, 2], "FP32")
            inp.set_data_from_numpy(np.array([[i, i]], np.float32))
            client.async_stream_infer("m", [inp], request_id=str(i))
        out = [got.get(timeout=30) for _ in range(20)]
        client.stop_stream()
        client.close()
        return out

    try:
        results = await asyncio.to_thread(run)
    finally:
        await door.stop(0)
    answers = {r.get_response().id: r.as_numpy("y") for r, e in results if e is None}
    assert sorted(answers, key=int) == [str(i) for i in range(20) if i % 4]
    assert all(a.tolist() == [[2 * int(i), 2 * int(i)]] for i, a in answers.items())
    errors = [str(e) for _, e in results if e is not None]
    assert len(errors) == 5 and all("INVALID_ARGUMENT" in e for e in errors)


async def test_cancel_ends_the_stream_and_its_queued_work() -> None:
    dispatcher = SlowDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), batching=False), dispatcher)
    door, address = await serve(plane, max_inflight=4)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.zeros((1, 2), np.float32).tobytes())
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream(STREAM)(timeout=30)
            for _ in range(4):
                await call.write(req.SerializeToString())
            while not any("answer" in repr(t.get_coro()) for t in asyncio.all_tasks()):
                await asyncio.sleep(0.01)  # the server has taken the requests in
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call.read()
        for _ in range(100):  # the stream's tasks end once the cancel reaches the server
            if not any("answer" in repr(t.get_coro()) for t in asyncio.all_tasks()):
                break
            await asyncio.sleep(0.02)
        assert not any("answer" in repr(t.get_coro()) for t in asyncio.all_tasks())
        assert dispatcher.calls == []  # nothing ran after the cancel
    finally:
        dispatcher.release.set()
        await door.stop(0)


async def test_unserved_methods_and_extensions() -> None:
    plane = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher())
    door, address = await serve(plane)

    def run() -> None:
        client = grpcclient.InferenceServerClient(address)
        with pytest.raises(InferenceServerException, match="not served by this gateway"):
            client.get_log_settings()
        config = client.get_model_config("m", as_json=True)["config"]
        assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == ["2"]
        with pytest.raises(InferenceServerException, match="admin token"):
            client.load_model("m")
        with pytest.raises(InferenceServerException, match="model control is off"):
            client.load_model("m", headers={"authorization": "Bearer tok"})
        client.close()

    try:
        await asyncio.to_thread(run)
    finally:
        await door.stop(0)


async def test_the_streams_metadata_applies_to_each_of_its_requests() -> None:
    plane = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher())
    door, address = await serve(plane)
    req = pb.ModelInferRequest(model_name="m", id="r1")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.zeros((1, 2), np.float32).tobytes())
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            replies = []
            for priority in ("no-such-class", ""):
                metadata = (("x-priority", priority),) if priority else ()
                call = channel.stream_stream(STREAM)(timeout=30, metadata=metadata)
                for _ in range(3):
                    await call.write(req.SerializeToString())
                await call.done_writing()
                replies.append([pb.ModelStreamInferResponse.FromString(r) async for r in call])
    finally:
        await door.stop(0)
    refused, answered = replies
    assert len(refused) == 3 and all("unknown priority class 'no-such-class'" in r.error_message for r in refused)
    assert all(r.infer_response.id == "r1" for r in refused)
    assert len(answered) == 3 and not any(r.error_message for r in answered)
