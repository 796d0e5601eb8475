"""Overload control with fakes only: priority classes, shedding, no starvation, fair share between tenants,
deadline-aware admission (gateway/plane/scheduler.py, batching.py), token buckets and the tenant gate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.errors import Code, GatewayError, Refusal
from gateway.plane.batching import Batcher
from gateway.tenants.gate import TenantGate, TokenBucket
from tests.unit.conftest import FakeClock

CLASSES = ("critical", "default", "batch")


class Model:
    """Records each batch's values; the first call waits on `gate` (so the queue fills behind it); every call
    takes `call_s` of the fake clock."""

    def __init__(self, clock: FakeClock | None = None, call_s: float = 0.0) -> None:
        self.gate = asyncio.Event()
        self.clock = clock
        self.call_s = call_s
        self.batches: list[list[int]] = []

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append([int(v) for v in inputs["x"][:, 0]])
        if len(self.batches) == 1:
            await self.gate.wait()
        if self.clock is not None:
            self.clock.advance(self.call_s)
        await asyncio.sleep(0)
        return inputs


def x(value: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 1), value, dtype=np.float32)}


async def turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def batcher(model: Model, **kw: Any) -> Batcher:
    refusals: list[tuple[Refusal, int, str]] = []
    b = Batcher(model, "m", classes=CLASSES, on_refusal=lambda *r: refusals.append(r), **kw)
    b.refusals = refusals  # type: ignore[attr-defined]
    return b


async def occupy(b: Batcher, model: Model) -> asyncio.Task[Any]:
    """Sends request 0 and waits until its call holds the only slot."""
    first = asyncio.ensure_future(b.submit(x(0), 1))
    await turns()
    assert model.batches == [[0]]
    return first


@pytest.mark.asyncio
async def test_higher_classes_are_served_first() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=2)
    first = await occupy(b, model)
    # Arrival order: batch, default, critical, batch, critical.
    order = [(1, 2), (2, 1), (3, 0), (4, 2), (5, 0)]
    tasks = [asyncio.ensure_future(b.submit(x(v), 1, level=level)) for v, level in order]
    await turns()
    model.gate.set()
    await asyncio.gather(first, *tasks)
    assert model.batches[1:] == [[3, 5], [2, 1], [4]]


@pytest.mark.asyncio
async def test_a_full_queue_sheds_the_lowest_class_first_and_refuses_when_nothing_is_lower() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=8, max_queue_rows=3)
    first = await occupy(b, model)
    low = [asyncio.ensure_future(b.submit(x(v), 1, level=level)) for v, level in ((1, 1), (2, 2), (3, 2))]
    await turns()
    critical = asyncio.ensure_future(b.submit(x(9), 1, level=0))  # the queue is full: the newest batch one goes
    await turns()
    assert low[2].done() and isinstance(low[2].exception(), GatewayError)
    err = low[2].exception()
    assert isinstance(err, GatewayError) and err.code is Code.UNAVAILABLE and err.refusal is Refusal.SHED
    # Full again, and nothing is lower than a batch request: it is refused, and nothing queued is shed.
    with pytest.raises(GatewayError) as refused:
        await b.submit(x(7), 1, level=2)
    assert refused.value.refusal is Refusal.QUEUE_FULL and refused.value.retry_after_s
    model.gate.set()
    await asyncio.gather(first, critical, low[0], low[1])
    assert model.batches[1] == [9, 1, 2]
    assert [(r.value, lvl) for r, lvl, _ in b.refusals] == [("shed", 2), ("queue_full", 2)]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_lower_class_is_not_starved_by_a_steady_higher_one() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=1, lower_share=0.25)
    first = await occupy(b, model)
    starved = asyncio.ensure_future(b.submit(x(100), 1, level=2))
    critical = [asyncio.ensure_future(b.submit(x(v), 1, level=0)) for v in range(1, 13)]
    await turns()
    model.gate.set()
    await asyncio.gather(first, starved, *critical)
    served = [batch[0] for batch in model.batches[1:]]
    assert served.index(100) < 4  # one batch in four is led by the lower class that waited longest


@pytest.mark.asyncio
async def test_strict_priority_without_a_share_serves_the_lower_class_last() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=1, lower_share=0.0)
    first = await occupy(b, model)
    starved = asyncio.ensure_future(b.submit(x(100), 1, level=2))
    critical = [asyncio.ensure_future(b.submit(x(v), 1, level=0)) for v in range(1, 9)]
    await turns()
    model.gate.set()
    await asyncio.gather(first, starved, *critical)
    assert model.batches[-1] == [100]


@pytest.mark.asyncio
async def test_tenants_of_one_class_share_batches_round_robin() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=4)
    first = await occupy(b, model)
    flood = [asyncio.ensure_future(b.submit(x(v), 1, tenant="flood")) for v in range(10, 18)]
    steady = [asyncio.ensure_future(b.submit(x(v), 1, tenant="steady")) for v in (1, 2)]
    await turns()
    model.gate.set()
    await asyncio.gather(first, *flood, *steady)
    assert sorted(model.batches[1]) == [1, 2, 10, 11]  # two each, though the flood came first


@pytest.mark.asyncio
async def test_a_full_queue_makes_room_for_a_tenant_with_a_smaller_share() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=8, max_queue_rows=4)
    first = await occupy(b, model)
    flood = [asyncio.ensure_future(b.submit(x(v), 1, tenant="flood")) for v in range(10, 14)]
    await turns()
    steady = asyncio.ensure_future(b.submit(x(1), 1, tenant="steady"))
    await turns()
    shed = [f for f in flood if f.done()]
    assert len(shed) == 1 and shed[0] is flood[-1]
    with pytest.raises(GatewayError):  # the flooder itself cannot push the others out
        await b.submit(x(20), 1, tenant="flood")
    model.gate.set()
    await asyncio.gather(first, steady, *flood[:-1])
    assert sorted(model.batches[1]) == [1, 10, 11, 12]


@pytest.mark.asyncio
async def test_fifo_mode_keeps_arrival_order_and_refuses_when_full() -> None:
    model = Model()
    b = Batcher(model, "m", max_inflight=1, max_batch_size=8, max_queue_rows=3, fair=False)
    first = await occupy(b, model)
    queued = [asyncio.ensure_future(b.submit(x(v), 1, tenant=t)) for v, t in ((1, "a"), (2, "a"), (3, "b"))]
    await turns()
    with pytest.raises(GatewayError) as refused:
        await b.submit(x(4), 1, tenant="b")
    assert refused.value.refusal is Refusal.QUEUE_FULL
    model.gate.set()
    await asyncio.gather(first, *queued)
    assert model.batches[1] == [1, 2, 3]


@pytest.mark.asyncio
async def test_a_request_predicted_to_miss_its_deadline_is_refused_at_once(clock: FakeClock) -> None:
    model = Model(clock, call_s=0.1)
    b = batcher(model, max_inflight=1, max_batch_size=2, clock=clock)
    model.gate.set()
    for v in range(3):  # three timed calls of 100 ms teach the batcher the call time
        await b.submit(x(v), 1)
    await turns()
    assert b.predict_s(1) == pytest.approx(0.1)
    clock.advance(10)  # long after those three: no critical stream is left to overtake lower classes
    model.gate.clear()
    model.batches.clear()
    first = await occupy(b, model)
    queued = [asyncio.ensure_future(b.submit(x(v), 1, clock() + 10, level=1)) for v in range(1, 5)]
    await turns()
    # A fifth row rides the third batch of two, behind the half-done call in flight: 3.5 calls, the three
    # waves a little slower (20/19) for the critical request in flight, a stream of 1 row/s so far.
    assert b.predict_s(1, level=1) == pytest.approx(0.1 * (3 * 20 / 19 + 0.5), rel=1e-4)
    with pytest.raises(GatewayError) as refused:
        await b.submit(x(9), 1, clock() + 0.3, level=1)
    assert refused.value.code is Code.DEADLINE_EXCEEDED and refused.value.refusal is Refusal.PREDICTED_MISS
    # A critical request only has the critical queue ahead of it (empty): it is admitted.
    assert b.predict_s(1, level=0) == pytest.approx(0.15)
    critical = asyncio.ensure_future(b.submit(x(8), 1, clock() + 0.3, level=0))
    lower = [asyncio.ensure_future(b.submit(x(v), 1, clock() + 10, level=2)) for v in (20, 21)]
    await turns()
    assert not critical.done()
    model.gate.set()
    await asyncio.gather(first, critical, *queued, *lower)
    assert model.batches[1][0] == 8


@pytest.mark.asyncio
async def test_a_lower_class_is_predicted_at_the_capacity_the_higher_classes_leave_it(clock: FakeClock) -> None:
    # Capacity 20 rows/s (2 rows per 100 ms call). Critical requests arrive at 15 rows/s for 3 s, behind a call
    # that holds the only slot: 45 rows queued. A default request then waits for all of them and for the
    # critical ones still arriving, which overtake it: at the 5 rows/s left over, about 9 s, not the 2.35 s the
    # queue alone would take at full capacity. With a 5 s deadline it is refused at once.
    model = Model(clock, call_s=0.1)
    b = batcher(model, max_inflight=1, max_batch_size=2, clock=clock)
    model.gate.set()
    for v in range(3):  # three timed calls of 100 ms teach the batcher the call time
        await b.submit(x(v), 1)
    model.gate.clear()
    model.batches.clear()
    first = await occupy(b, model)
    critical = []
    for v in range(45):
        clock.advance(1 / 15)
        critical.append(asyncio.ensure_future(b.submit(x(v), 1, clock() + 100, level=0)))
        await asyncio.sleep(0)
    await turns()
    assert b.predict_s(1, level=0) == pytest.approx(0.1 * (23 + 0.5))  # the highest class: its queue alone
    predicted = b.predict_s(1, level=1)
    assert predicted is not None and 8.0 < predicted < 9.5
    with pytest.raises(GatewayError) as refused:
        await b.submit(x(99), 1, clock() + 5, level=1)
    assert refused.value.code is Code.DEADLINE_EXCEEDED and refused.value.refusal is Refusal.PREDICTED_MISS
    # Once the critical stream stops, its rate fades and the lower class gets the whole capacity back.
    clock.advance(10)
    assert b.predict_s(1, level=1) == pytest.approx(0.1 * (23 + 0.5), rel=0.01)
    model.gate.set()
    await asyncio.gather(first, *critical)


@pytest.mark.asyncio
async def test_a_caller_that_goes_away_frees_its_place_in_a_full_queue_at_once() -> None:
    model = Model()
    b = batcher(model, max_inflight=1, max_batch_size=8, max_queue_rows=3)
    first = await occupy(b, model)
    queued = [asyncio.ensure_future(b.submit(x(v), 1, level=2)) for v in (1, 2, 3)]
    await turns()
    assert b.queued_rows == 3
    queued[0].cancel()  # its deadline fired, or the client hung up
    await turns()
    assert b.queued_rows == 2
    late = asyncio.ensure_future(b.submit(x(4), 1, level=2))  # the place is free: not refused as queue_full
    await turns()
    model.gate.set()
    await asyncio.gather(first, late, *queued[1:])
    assert model.batches[1] == [2, 3, 4] and not b.refusals  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_queued_requests_that_cannot_finish_in_time_are_not_dispatched(clock: FakeClock) -> None:
    model = Model(clock, call_s=0.1)
    b = batcher(model, max_inflight=1, max_batch_size=4, clock=clock, admission=False)
    model.gate.set()
    for v in range(3):
        await b.submit(x(v), 1)
    model.gate.clear()
    model.batches.clear()
    first = await occupy(b, model)
    tight = asyncio.ensure_future(b.submit(x(5), 1, clock() + 0.15))
    loose = asyncio.ensure_future(b.submit(x(6), 1, clock() + 10))
    await turns()
    clock.advance(0.1)  # 50 ms left: less than one call
    model.gate.set()
    await asyncio.gather(first, loose)
    with pytest.raises(GatewayError) as late:
        await tight
    assert late.value.code is Code.DEADLINE_EXCEEDED and late.value.refusal is Refusal.EXPIRED
    assert [6] in model.batches and not any(5 in batch for batch in model.batches)


def test_token_bucket_allows_its_burst_then_says_when_to_retry(clock: FakeClock) -> None:
    bucket = TokenBucket(10.0, 1.0, clock)
    assert all(bucket.take(1) == 0 for _ in range(10))
    assert bucket.take(1) == pytest.approx(0.1)
    clock.advance(0.1)
    assert bucket.take(1) == 0
    clock.advance(100)  # refills to its depth, not beyond
    assert bucket.take(10) == 0 and bucket.take(1) > 0
    clock.advance(1.0)
    assert bucket.take(50) == 0  # bigger than the bucket: allowed from a full one, then in debt
    assert bucket.take(1) == pytest.approx(4.1)


def test_the_error_table_gives_429_to_rate_limits_and_keeps_413_for_size() -> None:
    assert GatewayError(Code.RESOURCE_EXHAUSTED, "too big").http_status == 413
    assert GatewayError(Code.RESOURCE_EXHAUSTED, "slow down", refusal=Refusal.RATE_LIMITED).http_status == 429
    assert GatewayError(Code.RESOURCE_EXHAUSTED, "quota", refusal=Refusal.QUOTA).http_status == 429
    assert GatewayError(Code.UNAUTHENTICATED, "who", refusal=Refusal.UNAUTHENTICATED).http_status == 401


@pytest.mark.asyncio
async def test_tenant_gate_keys_rates_quotas_and_rotation(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "tenants.json"
    gate = TenantGate(path, clock=clock)
    added = await gate.add("shop", {"requests_per_s": 2, "max_inflight": 1, "priority": "critical"})
    key = added["key"]
    assert key not in path.read_text() and added["keys"] == 1
    with pytest.raises(GatewayError) as missing:
        gate.admit("", "m")
    assert missing.value.code is Code.UNAUTHENTICATED
    with pytest.raises(GatewayError):
        gate.admit("gk_wrong", "m")
    a = gate.admit(key, "m")
    assert a.tenant == "shop" and a.priority == "critical"
    with pytest.raises(GatewayError) as quota:
        gate.admit(key, "m")  # one in flight at model m already
    assert quota.value.refusal is Refusal.QUOTA and quota.value.http_status == 429
    gate.release(a)
    gate.release(gate.admit(key, "m"))
    with pytest.raises(GatewayError) as rate:
        gate.admit(key, "m")  # two per second, burst one second: the third is over
    assert rate.value.refusal is Refusal.RATE_LIMITED and rate.value.retry_after_s == pytest.approx(0.5)
    rotated = await gate.rotate("shop")
    with pytest.raises(GatewayError):
        gate.admit(key, "m")
    clock.advance(1)
    gate.release(gate.admit(rotated["key"], "m"))
    await gate.set_limits("shop", {"requests_per_s": None})
    assert gate.view()["tenants"]["shop"]["requests_per_s"] is None
    # Another process's gate on the same file sees the change when it re-reads it.
    other = TenantGate(path, clock=clock)
    other.release(other.admit(rotated["key"], "m"))
    await gate.remove("shop")
    assert other.reload() and json.loads(path.read_text())["tenants"] == {}
    with pytest.raises(GatewayError):
        other.admit(rotated["key"], "m")
