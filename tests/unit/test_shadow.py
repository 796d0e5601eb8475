"""Shadow traffic through the data plane (fake dispatcher, real batchers): a shadow never changes, delays
or fails the primary; its answers are logged under the primary's request id and compared; drops are counted."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from gateway.core import DataPlane
from gateway.errors import Code, GatewayError
from gateway.settings import ShadowSettings
from gateway.traffic.routing import ModelSplit, RoutingTable
from gateway.traffic.shadow import compare
from gateway.types import RequestRecord
from tests.unit.test_core import GUARD_S, catalog, infer, request

Arrays = dict[str, np.ndarray]


class Versions:
    """Version 1 answers y = 2x; 2 answers the same but slowly (until released); 3 raises; 4 answers y = 2x + 1."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        self.calls.append(version)
        x = inputs["x"]
        if version == "2":
            await self.release.wait()
        if version == "3":
            raise RuntimeError("shadow model is broken")
        y = x * 2 + (1 if version == "4" else 0)
        return {"y": y, "v": np.zeros(len(x), dtype=np.float32)}


class Log:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.healthy = True

    async def append(self, record: RequestRecord, *, background: bool = False) -> None:
        self.records.append(record)


def plane(shadows: dict[str, float], max_inflight: int = 64) -> tuple[DataPlane, Versions, Log]:
    versions, log = Versions(), Log()
    p = DataPlane(
        catalog(*[("m", v, "READY") for v in "1234"]),
        versions,
        request_log=log,
        shadow=ShadowSettings(max_inflight=max_inflight, timeout_ms=GUARD_S * 1000),
    )
    p.shadow._rng = random.Random(5)  # the sampling test's count is then fixed
    p.router.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 100})}, shadows={"m": shadows}))
    return p, versions, log


def sample(p: DataPlane, name: str, labels: dict[str, str]) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


async def settle(p: DataPlane) -> None:
    await asyncio.wait_for(p.shadow.close(GUARD_S), GUARD_S)


async def test_a_slow_and_a_failing_shadow_leave_the_primary_alone() -> None:
    p, versions, log = plane({"2": 1.0, "3": 1.0})
    answers = await asyncio.gather(*(infer(p, request(start=i, id=f"r{i}")) for i in range(20)))
    # Every primary answer came back while the slow shadow was still blocked.
    assert [a.version for a in answers] == ["1"] * 20 and p.shadow.inflight > 0
    assert all(np.array_equal(a.outputs[0].data, request(start=i).inputs[0].data * 2) for i, a in enumerate(answers))
    versions.release.set()
    await settle(p)
    primary = [r for r in log.records if r.role != "shadow"]
    shadow = [r for r in log.records if r.role == "shadow"]
    assert len(primary) == 20 and all(r.code == "OK" for r in primary)
    assert sorted((r.request_id, r.version, r.code) for r in shadow) == sorted(
        [(f"r{i}", "2", "OK") for i in range(20)] + [(f"r{i}", "3", "INTERNAL") for i in range(20)]
    )
    assert all(r.routing_reason == "shadow of version 1" for r in shadow)
    assert sample(p, "gateway_shadow_comparisons_total", {"model": "m", "version": "2", "result": "agree"}) == 20
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "3", "reason": "error"}) == 20
    # The shadows' calls are not counted as the model's requests.
    assert sample(p, "gateway_inference_requests_total", {"model": "m", "version": "2", "code": "OK"}) == 0


async def test_disagreement_and_mean_absolute_difference() -> None:
    p, _, log = plane({"4": 1.0})
    await infer(p, request(rows=3))
    await settle(p)
    assert sample(p, "gateway_shadow_comparisons_total", {"model": "m", "version": "4", "result": "disagree"}) == 1
    # y differs by 1 on each of its 6 elements, v not at all on its 3: mean |diff| = 6 / 9
    assert sample(p, "gateway_shadow_mean_abs_diff_sum", {"model": "m", "version": "4"}) == pytest.approx(6 / 9)
    assert [r.role for r in log.records] == ["primary", "shadow"]


async def test_beyond_max_inflight_copies_are_dropped_and_counted() -> None:
    p, versions, log = plane({"2": 1.0}, max_inflight=3)
    await asyncio.gather(*(infer(p, request(start=i)) for i in range(10)))
    assert p.shadow.inflight == 3
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "2", "reason": "full"}) == 7
    versions.release.set()
    await settle(p)
    assert len([r for r in log.records if r.role == "shadow"]) == 3


async def test_sampling_and_no_shadow_of_a_pinned_shadow_version() -> None:
    p, versions, log = plane({"4": 0.25})
    for i in range(400):
        await infer(p, request(start=i))
    await settle(p)
    mirrored = len([r for r in log.records if r.role == "shadow"])
    assert 50 < mirrored < 150  # binomial(400, 0.25): mean 100, sd 8.7
    versions.calls.clear()
    await infer(p, request(version="4"))
    await settle(p)
    assert versions.calls == ["4"]  # the request named the shadow version itself: no copy to it


async def test_an_invalid_request_is_not_mirrored() -> None:
    p, versions, _ = plane({"2": 1.0})
    bad = request()
    bad = type(bad)(model="m", version=None, inputs=(type(bad.inputs[0])("x", "INT32", bad.inputs[0].data),))
    with pytest.raises(GatewayError) as refused:
        await infer(p, bad)
    assert refused.value.code == Code.INVALID_ARGUMENT
    await settle(p)
    assert versions.calls == []


async def test_close_waits_for_running_shadows_then_cancels_them() -> None:
    p, _, log = plane({"2": 1.0})
    await infer(p, request())
    await asyncio.wait_for(p.shadow.close(0.05), GUARD_S)
    assert p.shadow.inflight == 0 and [r.role for r in log.records] == ["primary"]
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "2", "reason": "shutdown"}) == 1


def test_compare() -> None:
    a: dict[str, Any] = {"y": np.array([1.0, 2.0]), "s": np.array([b"a"], dtype=object)}
    assert compare(a, {"y": np.array([1.0, 2.0005]), "s": np.array([b"a"], dtype=object)}, 1e-3)[0]
    assert not compare(a, {"y": np.array([1.0, 2.1]), "s": a["s"]}, 1e-3)[0]
    assert not compare(a, {"y": np.array([1.0]), "s": a["s"]}, 1e-3)[0]  # shape differs
    assert not compare(a, {"y": a["y"]}, 1e-3)[0]  # an output is missing
    assert not compare(a, {"y": a["y"], "s": np.array([b"b"], dtype=object)}, 1e-3)[0]
    assert compare({"y": np.array([np.nan])}, {"y": np.array([np.nan])}, 1e-3) == (False, None)


async def test_a_request_too_big_to_mirror_is_dropped_and_counted() -> None:
    p, versions, log = plane({"4": 1.0})
    p.shadow.settings = p.shadow.settings.model_copy(update={"max_request_bytes": 8})
    await infer(p, request(rows=2))  # 2 x 2 float32 = 16 bytes of input
    await settle(p)
    assert versions.calls == ["1"] and [r.role for r in log.records] == ["primary"]
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "4", "reason": "too_large"}) == 1


async def test_a_failing_request_log_never_escapes_a_shadow_task() -> None:
    p, _, log = plane({"4": 1.0})

    async def broken(record: RequestRecord) -> None:
        if record.role == "shadow":
            raise OSError("disk gone")
        log.records.append(record)

    p.shadow._append = broken
    await infer(p, request())
    await settle(p)
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "4", "reason": "error"}) == 1


async def test_copies_share_calls_and_each_record_holds_its_own_rows() -> None:
    p, versions, log = plane({"4": 1.0})
    # Twelve 2-row requests at once; the shadow version takes 8 rows per call: three calls, not twelve.
    await asyncio.gather(*(infer(p, request(start=10 * i, id=f"r{i}")) for i in range(12)))
    await settle(p)
    assert versions.calls.count("4") == 3
    shadow = {r.request_id: r for r in log.records if r.role == "shadow"}
    assert sorted(shadow) == sorted(f"r{i}" for i in range(12))
    for i in range(12):
        y = dict((t.name, t.data) for t in shadow[f"r{i}"].outputs)["y"]
        assert np.array_equal(y, request(start=10 * i).inputs[0].data * 2 + 1)
        assert shadow[f"r{i}"].batch_rows == 8 and shadow[f"r{i}"].code == "OK"
    assert sample(p, "gateway_shadow_comparisons_total", {"model": "m", "version": "4", "result": "disagree"}) == 12
    assert p.shadow.inflight == 0


async def test_copies_for_a_version_that_went_unready_are_recorded_unavailable() -> None:
    p, versions, log = plane({"4": 1.0})
    p.catalog.set_state("m", "4", "LOADING", "replicas are restarting")
    await infer(p, request(id="r1"))
    await settle(p)
    assert "4" not in versions.calls
    (shadow,) = [r for r in log.records if r.role == "shadow"]
    assert shadow.request_id == "r1" and shadow.code == "UNAVAILABLE" and "not ready" in shadow.error
    assert sample(p, "gateway_shadow_dropped_total", {"model": "m", "version": "4", "reason": "unavailable"}) == 1
    assert p.shadow.inflight == 0


async def test_a_version_that_does_not_batch_gets_one_copy_per_call() -> None:
    versions, log = Versions(), Log()
    infos = catalog(("m", "1", "READY"))
    infos.add(catalog(("m", "4", "READY"), batching=False).get("m", "4"))
    p = DataPlane(infos, versions, request_log=log, shadow=ShadowSettings(timeout_ms=GUARD_S * 1000))
    p.router.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 100})}, shadows={"m": {"4": 1.0}}))
    await asyncio.gather(*(infer(p, request(start=10 * i, id=f"r{i}")) for i in range(20)))
    await settle(p)
    assert versions.calls.count("4") == 20
    shadow = {r.request_id: r for r in log.records if r.role == "shadow"}
    assert len(shadow) == 20 and all(r.code == "OK" for r in shadow.values())
    for i in range(20):
        y = dict((t.name, t.data) for t in shadow[f"r{i}"].outputs)["y"]
        assert np.array_equal(y, request(start=10 * i).inputs[0].data * 2 + 1)
