"""RayDispatcher.infer when a replica dies mid-call: one retry (inference is idempotent), then UNAVAILABLE.

Fake deployment handles stand in for Ray Serve; no cluster is started.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from gateway.dispatch import RayDispatcher
from gateway.errors import Code, GatewayError
from serving.runtimes import RuntimeFault

pytestmark = pytest.mark.asyncio


class FakeHandle:
    """Answers each call with the next scripted outcome: an exception to raise, or arrays to return."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.init_options: list[dict[str, Any]] = []
        self.call_options: dict[str, Any] = {}

    def _init(self, **options: Any) -> None:
        self.init_options.append(options)

    def options(self, **options: Any) -> FakeHandle:
        self.call_options = options
        return self

    def remote(self, inputs: dict[str, np.ndarray]) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer() -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


def dispatcher(handle: FakeHandle) -> RayDispatcher:
    d = RayDispatcher(None, None, "FPGA")
    d._handles[("m", "1")] = handle  # type: ignore[assignment]
    return d


X = {"x": np.ones((1, 2), np.float32)}


async def test_a_handle_is_set_up_once_with_its_router_on_the_calling_loop() -> None:
    handle = FakeHandle({"y": X["x"]}, {"y": X["x"]})
    d = dispatcher(handle)
    await d.infer("m", "1", X)
    await d.infer("m", "1", X)
    assert handle.init_options == [{"_run_router_in_separate_loop": False}]
    assert handle.call_options["method_name"] == "infer" and handle.calls == 2


async def test_an_unknown_version_is_unavailable() -> None:
    with pytest.raises(GatewayError) as e:
        await dispatcher(FakeHandle()).infer("m", "2", X)
    assert e.value.code == Code.UNAVAILABLE and "not deployed" in e.value.message


@pytest.mark.parametrize("lost", [ActorDiedError(), ReplicaUnavailableError("r1")])
async def test_a_replica_lost_mid_call_is_retried_once(lost: Exception) -> None:
    handle = FakeHandle(lost, {"y": X["x"] * 2})
    d = dispatcher(handle)
    out = await d.infer("m", "1", X)
    assert out["y"].tolist() == [[2.0, 2.0]] and handle.calls == 2 and d.retries == 1


async def test_a_second_loss_is_unavailable() -> None:
    handle = FakeHandle(ActorDiedError(), ActorDiedError(), {"y": X["x"]})
    with pytest.raises(GatewayError) as e:
        await dispatcher(handle).infer("m", "1", X)
    assert e.value.code == Code.UNAVAILABLE and "no healthy replica" in e.value.message and handle.calls == 2


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (DeploymentUnavailableError(DeploymentID(name="d", app_name="a")), Code.UNAVAILABLE),  # nothing to retry on
        (BackPressureError(num_queued_requests=1, max_queued_requests=1), Code.UNAVAILABLE),  # overload: no retry
    ],
)
async def test_no_retry_when_no_replica_could_answer(fault: Exception, code: Code) -> None:
    handle = FakeHandle(fault, {"y": X["x"]})
    with pytest.raises(GatewayError) as e:
        await dispatcher(handle).infer("m", "1", X)
    assert e.value.code == code and handle.calls == 1


@pytest.mark.parametrize(
    ("code", "expected"), [("INVALID_ARGUMENT", Code.INVALID_ARGUMENT), ("UNAVAILABLE", Code.UNAVAILABLE)]
)
async def test_a_runtime_fault_keeps_its_code_and_is_not_retried(code: str, expected: Code) -> None:
    # Over the gRPC transport a replica's exception arrives as itself, not wrapped in a RayTaskError.
    handle = FakeHandle(RuntimeFault(code, "the remote server refused it"), {"y": X["x"]})
    with pytest.raises(GatewayError) as e:
        await dispatcher(handle).infer("m", "1", X)
    assert e.value.code == expected and "refused it" in e.value.message and handle.calls == 1


def rpc_error(code: Any) -> Exception:
    import grpc

    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="replica said no")


async def test_a_broken_replica_channel_is_retried_once_then_unavailable() -> None:
    import grpc

    handle = FakeHandle(rpc_error(grpc.StatusCode.UNAVAILABLE), {"y": X["x"]})
    assert (await dispatcher(handle).infer("m", "1", X))["y"].shape == (1, 2) and handle.calls == 2
    handle = FakeHandle(rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(GatewayError) as e:
        await dispatcher(handle).infer("m", "1", X)
    assert e.value.code == Code.UNAVAILABLE and handle.calls == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("RESOURCE_EXHAUSTED", Code.RESOURCE_EXHAUSTED),
        ("DEADLINE_EXCEEDED", Code.DEADLINE_EXCEEDED),
        ("INTERNAL", Code.INTERNAL),
        ("UNKNOWN", Code.INTERNAL),
    ],
)
async def test_a_replica_channel_status_is_not_retried(status: str, code: Code) -> None:
    import grpc

    handle = FakeHandle(rpc_error(getattr(grpc.StatusCode, status)), {"y": X["x"]})
    with pytest.raises(GatewayError) as e:
        await dispatcher(handle).infer("m", "1", X)
    assert e.value.code == code and handle.calls == 1
