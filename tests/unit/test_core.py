"""gateway.core.DataPlane with a real Catalog and a fake dispatcher (no Ray)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from contract.manifest import Batching, Manifest, TensorSpecModel
from gateway.core import DataPlane
from gateway.errors import Code, GatewayError
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.settings import BatchingOverride
from gateway.types import InferRequest, RequestedOutput, Tensor, VersionStatus

Arrays = dict[str, np.ndarray]


def manifest(name: str = "m", version: str = "1", *, batching: bool = True, max_batch_size: int = 8) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        runtime="array",
        inputs=[TensorSpecModel(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[
            TensorSpecModel(name="y", datatype="FP32", shape=[-1, 2]),
            TensorSpecModel(name="v", datatype="FP32", shape=[-1]),
        ],
        batching=Batching(enabled=batching, max_batch_size=max_batch_size),
    )


def catalog(
    *versions: tuple[str, str, str], batching: bool = True, override: BatchingOverride | None = None
) -> Catalog:
    """versions: (model, version, state)."""
    infos = []
    for model, version, state in versions:
        info = VersionInfo.from_manifest(manifest(model, version, batching=batching), override or BatchingOverride())
        info.state, info.reason = state, ("" if state == "READY" else "replicas are starting")
        infos.append(info)
    return Catalog(infos)


class FakeDispatcher:
    """y = 2x, v = the version number on every row; records each call."""

    def __init__(self, drop: tuple[str, ...] = (), raises: BaseException | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.drop = drop
        self.raises = raises

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        x = inputs["x"]
        self.calls.append((model, version, len(x)))
        await asyncio.sleep(0)
        if self.raises is not None:
            raise self.raises
        out = {"y": x * 2, "v": np.full(len(x), float(version), dtype=np.float32)}
        return {k: v for k, v in out.items() if k not in self.drop}


def request(
    model: str = "m",
    rows: int = 2,
    *,
    version: str | None = None,
    start: float = 0.0,
    outputs: tuple[str, ...] = (),
    deadline: float | None = None,
    **kw: Any,
) -> InferRequest:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) + start
    return InferRequest(
        model=model,
        version=version,
        inputs=(Tensor("x", "FP32", x),),
        outputs=tuple(RequestedOutput(o) for o in outputs),
        deadline=deadline,
        **kw,
    )


GUARD_S = 10.0  # only a broken data plane makes a test wait this long: it turns a hang into a failure


async def infer(plane: DataPlane, req: InferRequest) -> Any:
    try:
        return await asyncio.wait_for(plane.infer(req), GUARD_S)
    except TimeoutError:
        raise AssertionError("the request was never answered") from None


async def refused(plane: DataPlane, req: InferRequest) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        await infer(plane, req)
    return e.value


def count(plane: DataPlane, model: str, version: str, code: str) -> float:
    value = plane.metrics.registry.get_sample_value(
        "gateway_inference_requests_total", {"model": model, "version": version, "code": code}
    )
    return value or 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_infer_happy_path(batching: bool) -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), d)
    assert bool(plane._batchers) is batching
    resp = await infer(plane, request(rows=3, id="req-1"))
    assert (resp.model, resp.version, resp.id) == ("m", "1", "req-1")
    assert [t.name for t in resp.outputs] == ["y", "v"]
    assert [t.datatype for t in resp.outputs] == ["FP32", "FP32"]
    np.testing.assert_array_equal(resp.outputs[0].data, np.arange(6, dtype=np.float32).reshape(3, 2) * 2)
    assert resp.outputs[1].data.tolist() == [1.0, 1.0, 1.0]
    assert d.calls == [("m", "1", 3)]
    assert count(plane, "m", "1", "OK") == 1
    await plane.close()


@pytest.mark.asyncio
async def test_concurrent_requests_through_the_batcher_get_their_own_rows() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY")), d)
    reqs = [request(rows=1 + i % 3, start=100.0 * i) for i in range(60)]
    resps = await asyncio.gather(*(infer(plane, r) for r in reqs))
    for req, resp in zip(reqs, resps, strict=True):
        np.testing.assert_array_equal(resp.outputs[0].data, req.inputs[0].data * 2)
    assert sum(rows for _, _, rows in d.calls) == sum(1 + i % 3 for i in range(60))
    assert len(d.calls) < 60 and all(rows <= 8 for _, _, rows in d.calls)
    await plane.close()


@pytest.mark.asyncio
async def test_pinned_version_is_served() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "READY")), d)
    resp = await infer(plane, request(version="1"))
    assert resp.version == "1" and resp.outputs[1].data[0] == 1.0
    assert d.calls == [("m", "1", 2)]


@pytest.mark.asyncio
async def test_default_version_is_the_newest_ready_one_in_numeric_order() -> None:
    cat = catalog(("m", "2", "READY"), ("m", "10", "LOADING"), ("m", "1", "READY"))
    plane = DataPlane(cat, FakeDispatcher())
    assert (await infer(plane, request())).version == "2"
    cat.set_state("m", "10", "READY")
    assert (await infer(plane, request())).version == "10"  # 10 is newer than 2
    cat.set_state("m", "10", "UNAVAILABLE", "crashed")
    assert (await infer(plane, request())).version == "2"


@pytest.mark.asyncio
async def test_unknown_model_or_version_is_not_found() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "READY")), d)
    e = await refused(plane, request("nope"))
    assert e.code is Code.NOT_FOUND and "'nope'" in e.message
    e = await refused(plane, request(version="3"))
    assert e.code is Code.NOT_FOUND and "'3'" in e.message and "1, 2" in e.message
    assert d.calls == []
    assert count(plane, "", "", "NOT_FOUND") == 2  # unknown names never become metric labels


@pytest.mark.asyncio
async def test_not_ready_version_is_unavailable() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "LOADING"), ("m", "2", "READY")), d)
    e = await refused(plane, request(version="1"))
    assert e.code is Code.UNAVAILABLE and "'1'" in e.message and "replicas are starting" in e.message
    assert e.retry_after_s is not None
    plane.catalog.set_state("m", "2", "UNAVAILABLE", "out of memory")
    e = await refused(plane, request())  # unpinned, nothing ready
    assert e.code is Code.UNAVAILABLE and "out of memory" in e.message
    assert d.calls == []


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_requested_output_subset(batching: bool) -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), FakeDispatcher())
    resp = await infer(plane, request(outputs=("v",)))
    assert [t.name for t in resp.outputs] == ["v"]
    resp = await infer(plane, request(outputs=("v", "y")))
    assert [t.name for t in resp.outputs] == ["v", "y"]


@pytest.mark.asyncio
async def test_unknown_requested_output_is_invalid_and_not_dispatched() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY")), d)
    e = await refused(plane, request(outputs=("nope",)))
    assert e.code is Code.INVALID_ARGUMENT and "'nope'" in e.message
    assert d.calls == []


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_output_missing_from_the_model_is_internal(batching: bool) -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), FakeDispatcher(drop=("v",)))
    e = await refused(plane, request())
    assert e.code is Code.INTERNAL and "'v'" in e.message
    resp = await infer(plane, request(outputs=("y",)))  # not asked for, not missed
    assert [t.name for t in resp.outputs] == ["y"]


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_deadline_already_passed(batching: bool) -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), d)
    e = await refused(plane, request(deadline=time.monotonic() - 1.0))
    assert e.code is Code.DEADLINE_EXCEEDED and e.http_status == 504
    assert d.calls == []
    resp = await infer(plane, request(deadline=time.monotonic() + 3600.0))
    assert resp.version == "1"


class BlockedDispatcher:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        self.calls += 1
        await self.release.wait()
        return {"y": inputs["x"] * 2, "v": np.zeros(len(inputs["x"]), dtype=np.float32)}


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_deadline_passing_while_the_model_runs(batching: bool) -> None:
    d = BlockedDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), d)
    e = await refused(plane, request(deadline=time.monotonic() + 0.02))  # the model never answers in time
    assert e.code is Code.DEADLINE_EXCEEDED and "'m'" in e.message
    assert d.calls == 1
    assert count(plane, "m", "1", "DEADLINE_EXCEEDED") == 1
    d.release.set()
    assert (await infer(plane, request())).version == "1"
    await plane.close()


@pytest.mark.asyncio
async def test_invalid_input_is_refused_before_dispatch() -> None:
    d = FakeDispatcher()
    plane = DataPlane(catalog(("m", "1", "READY")), d)
    bad = InferRequest(model="m", inputs=(Tensor("x", "FP32", np.zeros((2, 3), dtype=np.float32)),))
    e = await refused(plane, bad)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message
    e = await refused(plane, request(rows=9))  # over max_batch_size 8
    assert e.code is Code.INVALID_ARGUMENT and "1..8" in e.message
    assert d.calls == []
    assert count(plane, "m", "1", "INVALID_ARGUMENT") == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("batching", [True, False])
async def test_dispatcher_gateway_error_passes_through(batching: bool) -> None:
    err = GatewayError(Code.UNAVAILABLE, "no healthy replica")
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), FakeDispatcher(raises=err))
    e = await refused(plane, request())
    assert e.code is Code.UNAVAILABLE and e.message == "no healthy replica"
    assert count(plane, "m", "1", "UNAVAILABLE") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "batching",
    [
        True,
        False,
    ],
)
async def test_unexpected_dispatcher_exception_is_internal(batching: bool) -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), batching=batching), FakeDispatcher(raises=RuntimeError("boom")))
    e = await refused(plane, request())
    assert e.code is Code.INTERNAL and "boom" not in e.message
    assert count(plane, "m", "1", "INTERNAL") == 1


def test_batching_override_turns_the_batcher_off_and_changes_limits() -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), override=BatchingOverride(enabled=False)), FakeDispatcher())
    assert plane._batchers == {}
    plane = DataPlane(
        catalog(
            ("m", "1", "READY"), override=BatchingOverride(max_batch_size=2, max_inflight_batches=3, max_wait_ms=5)
        ),
        FakeDispatcher(),
    )
    b = plane._batchers[("m", "1")]
    assert (b.max_batch_size, b.max_inflight, b.max_wait_s) == (2, 3, 0.005)


def test_server_ready_once_every_model_has_a_ready_version() -> None:
    cat = catalog(("m", "1", "LOADING"), ("m", "2", "LOADING"), ("e", "1", "READY"))
    plane = DataPlane(cat, FakeDispatcher())
    assert plane.server_live() and not plane.server_ready()
    assert not cat.settled()
    cat.set_state("m", "1", "READY")
    assert plane.server_ready()  # every model can answer an unpinned request
    assert not cat.settled()  # m/2 is still loading
    cat.set_state("m", "2", "UNAVAILABLE", "needs an FPGA")
    assert plane.server_ready() and cat.settled()
    cat.set_state("e", "1", "UNAVAILABLE", "crashed")
    assert not plane.server_ready()


@pytest.mark.asyncio
async def test_close_makes_the_server_not_live_nor_ready() -> None:
    plane = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher())
    await infer(plane, request())
    await plane.close()
    assert not plane.server_live() and not plane.server_ready()


def test_model_ready_and_metadata() -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "LOADING")), FakeDispatcher())
    assert plane.model_ready("m", None) and plane.model_ready("m", "1") and not plane.model_ready("m", "2")
    md = plane.model_metadata("m", None)
    assert md.name == "m" and md.versions == ("1", "2") and md.platform == "numpy"
    assert [(t.name, t.datatype, t.shape) for t in md.inputs] == [("x", "FP32", (-1, 2))]
    assert [t.name for t in md.outputs] == ["y", "v"]
    assert plane.model_metadata("m", "2").versions == ("2",)
    with pytest.raises(GatewayError) as e:
        plane.model_metadata("m", "9")
    assert e.value.code is Code.NOT_FOUND
    with pytest.raises(GatewayError) as e:
        plane.model_ready("nope", None)
    assert e.value.code is Code.NOT_FOUND


def test_metadata_of_a_model_with_no_ready_version_still_answers() -> None:
    plane = DataPlane(catalog(("m", "1", "LOADING"), ("m", "2", "LOADING")), FakeDispatcher())
    md = plane.model_metadata("m", None)
    assert md.versions == ("1", "2") and not plane.model_ready("m", None)


def test_repository_index_ready_filter() -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "LOADING"), ("e", "1", "READY")), FakeDispatcher())
    everything = plane.repository_index()
    assert {(s.model, s.version, s.state) for s in everything} == {
        ("m", "1", "READY"),
        ("m", "2", "LOADING"),
        ("e", "1", "READY"),
    }
    ready = plane.repository_index(ready_only=True)
    assert sorted((s.model, s.version) for s in ready) == [("e", "1"), ("m", "1")]
    assert all(isinstance(s, VersionStatus) and s.state == "READY" for s in ready)
    loading = next(s for s in everything if s.version == "2")
    assert loading.reason == "replicas are starting"


def test_server_metadata() -> None:
    name, version, extensions = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher()).server_metadata()
    assert name == "model-gateway" and version and "binary_tensor_data" in extensions
