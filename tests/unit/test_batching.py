"""gateway.plane.batching.Batcher: correctness of the micro-batcher under concurrency, with fakes only.

Ordering is controlled with events and a bounded number of event-loop turns, never with sleeps;
time that the batcher reads comes from a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gateway.errors import Code, GatewayError
from gateway.plane.batching import Batcher, BatchStats

pytestmark = pytest.mark.asyncio

Arrays = dict[str, np.ndarray]


class FakeModel:
    """Records every batch it is called with; optionally blocks on a gate; returns inputs * 2."""

    def __init__(self, gate: asyncio.Event | None = None, result: Callable[[Arrays], Arrays] | None = None) -> None:
        self.gate = gate
        self.result = result or (lambda x: {k: v * 2 for k, v in x.items()})
        self.batches: list[Arrays] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.called = asyncio.Event()

    async def __call__(self, inputs: Arrays) -> Arrays:
        self.batches.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.called.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            return self.result(inputs)
        finally:
            self.concurrent -= 1

    @property
    def batch_rows(self) -> list[int]:
        return [len(next(iter(b.values()))) for b in self.batches]

    def saw(self, value: float) -> bool:
        return any(np.any(v == value) for b in self.batches for v in b.values())


async def turns(n: int = 50) -> None:
    """Lets the event loop run `n` times round (no wall-clock time involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], limit: int = 2000) -> None:
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached within the event-loop turn budget")


GUARD_S = 10.0  # only a broken batcher makes a test wait this long: it turns a hang into a failure


async def answered(aw: Any) -> Any:
    """Awaits one awaitable (a submit, a task, a gather), failing instead of hanging if it never completes."""
    try:
        return await asyncio.wait_for(aw, GUARD_S)
    except TimeoutError:
        raise AssertionError("a caller was never answered") from None


async def settle(*tasks: asyncio.Task[Any]) -> None:
    """Waits until every task is done (successfully or not), failing instead of hanging."""
    _, pending = await asyncio.wait(tasks, timeout=GUARD_S)
    for t in pending:
        t.cancel()
    assert not pending, f"{len(pending)} caller(s) were never answered"


def refused_at_once(coro: Any) -> GatewayError:
    """Runs a submit() coroutine up to its first suspension: it must raise before it ever waits."""
    try:
        with pytest.raises(GatewayError) as e:
            coro.send(None)
    finally:
        coro.close()
    return e.value


def rows_of(value: float, rows: int, width: int = 2, dtype: Any = np.float64) -> Arrays:
    return {"x": np.full((rows, width), value, dtype=dtype)}


def code_of(task: asyncio.Task[Any]) -> Code:
    exc = task.exception()
    assert isinstance(exc, GatewayError), repr(exc)
    return exc.code


async def test_every_caller_gets_its_own_rows_back_under_concurrency() -> None:
    model = FakeModel()
    stats: list[BatchStats] = []
    b = Batcher(model, "m", max_batch_size=8, max_inflight=2, on_batch=stats.append)
    n = 500
    sizes = [1 + i % 4 for i in range(n)]
    inputs = [{"x": (np.arange(r * 3, dtype=np.float64).reshape(r, 3) + 1000.0 * i)} for i, r in enumerate(sizes)]
    results = await answered(asyncio.gather(*(b.submit(inp, r) for inp, r in zip(inputs, sizes, strict=True))))
    for inp, out in zip(inputs, results, strict=True):
        assert set(out) == {"x"}
        np.testing.assert_array_equal(out["x"], inp["x"] * 2)
    assert sum(model.batch_rows) == sum(sizes)  # every row dispatched exactly once
    assert max(model.batch_rows) <= 8
    assert len(model.batches) < n  # requests really were coalesced
    assert sum(s.requests for s in stats) == n and [s.rows for s in stats] == model.batch_rows
    assert b.queued_rows == 0 and b.inflight == 0
    await b.close()


async def test_batches_never_exceed_max_batch_size() -> None:
    model = FakeModel()
    b = Batcher(model, "m", max_batch_size=8, max_inflight=1)
    results = await answered(asyncio.gather(*(b.submit(rows_of(i, 3), 3) for i in range(30))))
    assert all(r <= 8 for r in model.batch_rows)
    assert 6 in model.batch_rows  # two requests of 3 fit, a third would make 9
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["x"], np.full((3, 2), 2.0 * i))


async def test_requests_with_different_trailing_shape_or_dtype_are_never_merged() -> None:
    model = FakeModel()
    b = Batcher(model, "m", max_batch_size=64, max_inflight=1)
    kinds = [(2, np.float64), (3, np.float64), (2, np.float32), (2, np.int64)]
    jobs = []
    for i in range(40):
        width, dtype = kinds[i % 4]
        jobs.append((rows_of(i, 1 + i % 3, width, dtype), 1 + i % 3))
    results = await answered(asyncio.gather(*(b.submit(x, r) for x, r in jobs)))
    for batch in model.batches:
        x = batch["x"]
        assert (x.shape[1], x.dtype) in [(w, np.dtype(d)) for w, d in kinds]
    assert len(model.batches) >= 4
    for (x, _), out in zip(jobs, results, strict=True):
        assert out["x"].dtype == x["x"].dtype and out["x"].shape == x["x"].shape
        np.testing.assert_array_equal(out["x"], x["x"] * 2)


async def test_multi_input_requests_are_split_per_input() -> None:
    model = FakeModel(result=lambda x: {"sum": x["a"] + x["b"][:, None]})
    b = Batcher(model, "m", max_batch_size=16)
    jobs = [{"a": np.full((r, 2), float(i)), "b": np.full(r, 100.0 * i)} for i, r in enumerate([1, 2, 3, 1, 2])]
    results = await answered(asyncio.gather(*(b.submit(j, len(j["b"])) for j in jobs)))
    for i, (j, out) in enumerate(zip(jobs, results, strict=True)):
        np.testing.assert_array_equal(out["sum"], np.full((len(j["b"]), 2), 101.0 * i))


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (GatewayError(Code.UNAVAILABLE, "replica gone"), Code.UNAVAILABLE),
        (ValueError("secret model internals"), Code.INTERNAL),
        (KeyError("x"), Code.INTERNAL),
    ],
)
async def test_a_failure_reaches_every_caller_in_the_batch(raised: Exception, code: Code) -> None:
    gate = asyncio.Event()
    calls = 0
    failing = True

    def result(x: Arrays) -> Arrays:
        nonlocal calls
        calls += 1
        if calls == 1 or not failing:
            return {k: v * 2 for k, v in x.items()}
        raise raised

    model = FakeModel(gate, result)
    b = Batcher(model, "m", max_batch_size=16, max_inflight=1)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    queued = [asyncio.create_task(b.submit(rows_of(10 + i, 2), 2)) for i in range(3)]
    await until(lambda: b.queued_rows == 6)
    gate.set()
    await settle(first, *queued)
    assert first.result()["x"].shape == (1, 2)
    assert model.batch_rows == [1, 6]  # the three queued requests went as one batch
    for t in queued:
        exc = t.exception()
        assert isinstance(exc, GatewayError) and exc.code is code
        assert "secret" not in exc.message
    assert b.inflight == 0
    # The batcher keeps working after a failure.
    failing = False
    out = await answered(b.submit(rows_of(5, 1), 1))
    np.testing.assert_array_equal(out["x"], np.full((1, 2), 10.0))


async def test_a_cancelled_caller_is_dropped_before_dispatch() -> None:
    gate = asyncio.Event()
    model = FakeModel(gate)
    stats: list[BatchStats] = []
    b = Batcher(model, "m", max_batch_size=16, max_inflight=1, on_batch=stats.append)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    doomed = asyncio.create_task(b.submit(rows_of(7, 2), 2))
    kept = asyncio.create_task(b.submit(rows_of(9, 1), 1))
    await until(lambda: b.queued_rows == 3)
    doomed.cancel()
    await turns()
    gate.set()
    await answered(first)
    out = await answered(kept)
    np.testing.assert_array_equal(out["x"], np.full((1, 2), 18.0))
    assert doomed.cancelled()
    assert not model.saw(7)
    assert model.batch_rows == [1, 1]
    assert stats[-1] == BatchStats(rows=1, requests=1, dropped=1)
    assert b.queued_rows == 0


async def test_a_caller_cancelled_while_its_batch_runs_does_not_disturb_the_others() -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    seen: list[Arrays] = []

    async def model(x: Arrays) -> Arrays:
        seen.append(x)
        await gates[len(seen) - 1].wait()
        return {k: v * 2 for k, v in x.items()}

    b = Batcher(model, "m", max_batch_size=16, max_inflight=1)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(lambda: len(seen) == 1)
    a = asyncio.create_task(b.submit(rows_of(2, 1), 1))
    c = asyncio.create_task(b.submit(rows_of(3, 2), 2))
    await until(lambda: b.queued_rows == 3)
    gates[0].set()
    await answered(first)
    await until(lambda: len(seen) == 2)  # a and c are in flight together
    assert len(seen[1]["x"]) == 3
    a.cancel()
    await turns()
    gates[1].set()
    out = await answered(c)
    np.testing.assert_array_equal(out["x"], np.full((2, 2), 6.0))
    assert a.cancelled()
    assert b.inflight == 0


async def test_expired_deadlines_are_answered_and_not_dispatched(clock: Any) -> None:
    gate = asyncio.Event()
    model = FakeModel(gate)
    stats: list[BatchStats] = []
    b = Batcher(model, "m", max_batch_size=16, max_inflight=1, clock=clock, on_batch=stats.append)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1, deadline=100.0))
    await until(model.called.is_set)
    late = asyncio.create_task(b.submit(rows_of(7, 1), 1, deadline=5.0))
    on_time = asyncio.create_task(b.submit(rows_of(8, 1), 1, deadline=50.0))
    no_deadline = asyncio.create_task(b.submit(rows_of(9, 1), 1))
    await until(lambda: b.queued_rows == 3)
    clock.t = 5.0  # exactly at the deadline counts as passed
    gate.set()
    await settle(first, late, on_time, no_deadline)
    assert code_of(late) is Code.DEADLINE_EXCEEDED
    assert on_time.result()["x"][0, 0] == 16.0 and no_deadline.result()["x"][0, 0] == 18.0
    assert not model.saw(7)
    assert model.batch_rows == [1, 2]
    assert stats[-1].dropped == 1
    assert b.queued_rows == 0


async def test_queue_full_is_unavailable_immediately_and_recovers(clock: Any) -> None:
    gate = asyncio.Event()
    model = FakeModel(gate)
    b = Batcher(model, "model 'm'", max_batch_size=16, max_queue_rows=4, max_inflight=1, clock=clock)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    assert b.queued_rows == 0  # taken rows no longer count as queued
    waiting = asyncio.create_task(b.submit(rows_of(2, 4), 4))
    await until(lambda: b.queued_rows == 4)
    e = refused_at_once(b.submit(rows_of(3, 1), 1))
    assert e.code is Code.UNAVAILABLE and e.http_status == 503
    assert e.retry_after_s is not None and "'m'" in e.message
    assert not model.saw(3)
    gate.set()
    await answered(first)
    await answered(waiting)
    assert b.queued_rows == 0
    out = await answered(b.submit(rows_of(4, 4), 4))
    np.testing.assert_array_equal(out["x"], np.full((4, 2), 8.0))


async def test_a_request_bigger_than_the_whole_queue_is_refused() -> None:
    b = Batcher(FakeModel(), "m", max_batch_size=64, max_queue_rows=4)
    assert refused_at_once(b.submit(rows_of(1, 5), 5)).code is Code.UNAVAILABLE


async def test_max_inflight_is_never_exceeded() -> None:
    gate = asyncio.Event()
    model = FakeModel(gate)
    b = Batcher(model, "m", max_batch_size=1, max_inflight=3)
    tasks = [asyncio.create_task(b.submit(rows_of(i, 1), 1)) for i in range(20)]
    await until(lambda: model.concurrent == 3)
    await turns(100)  # plenty of chances to start a fourth call
    assert model.concurrent == 3 and b.inflight == 3 and len(model.batches) == 3
    assert b.queued_rows == 17
    gate.set()
    results = await answered(asyncio.gather(*tasks))
    assert model.max_concurrent == 3 and len(model.batches) == 20
    for i, out in enumerate(results):
        assert out["x"][0, 0] == 2.0 * i


async def test_light_load_dispatches_each_request_alone_at_once() -> None:
    model = FakeModel()
    b = Batcher(model, "m", max_batch_size=64, max_wait_s=0.0)
    for i in range(10):
        task = asyncio.create_task(b.submit(rows_of(i, 1), 1))
        model.called.clear()
        await until(model.called.is_set, limit=10)  # no waiting for company
        out = await answered(task)
        assert out["x"][0, 0] == 2.0 * i
    assert model.batch_rows == [1] * 10


async def test_the_batch_of_one_gets_the_output_dict_unsliced() -> None:
    y = np.arange(6.0).reshape(3, 2)
    b = Batcher(FakeModel(result=lambda x: {"y": y}), "m", max_batch_size=8)
    out = await answered(b.submit(rows_of(0, 3), 3))
    assert out["y"] is y


async def test_max_wait_collects_company_until_the_batch_is_full(clock: Any) -> None:
    model = FakeModel()
    b = Batcher(model, "m", max_batch_size=3, max_wait_s=1000.0, clock=clock)
    tasks = [asyncio.create_task(b.submit(rows_of(1, 1), 1))]
    await turns(100)
    assert model.batches == []  # waits for company rather than leaving alone
    tasks.append(asyncio.create_task(b.submit(rows_of(2, 1), 1)))
    await turns(100)
    assert model.batches == []
    tasks.append(asyncio.create_task(b.submit(rows_of(3, 1), 1)))
    results = await answered(asyncio.gather(*tasks))  # the batch is full: it leaves without the wait running out
    assert model.batch_rows == [3]
    assert [r["x"][0, 0] for r in results] == [2.0, 4.0, 6.0]
    await b.close()


async def test_max_wait_ends_when_the_clock_passes_it(clock: Any) -> None:
    model = FakeModel()
    b = Batcher(model, "m", max_batch_size=100, max_wait_s=1000.0, clock=clock)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await turns(100)
    assert model.batches == []
    clock.advance(1000.0)
    second = asyncio.create_task(b.submit(rows_of(2, 2), 2))  # wakes the batcher, which sees the time is up
    a, c = await answered(asyncio.gather(first, second))
    assert model.batch_rows == [3]
    assert a["x"].shape == (1, 2) and c["x"].shape == (2, 2)
    await b.close()


@pytest.mark.parametrize("returned_rows", [0, 2, 4])
async def test_output_rows_not_matching_the_batch_is_internal_for_all(returned_rows: int) -> None:
    gate = asyncio.Event()
    calls = 0

    def result(x: Arrays) -> Arrays:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {k: v * 2 for k, v in x.items()}
        return {"y": np.zeros((returned_rows, 2)), "ok": np.zeros(3)}

    model = FakeModel(gate, result)
    b = Batcher(model, "m", max_batch_size=16, max_inflight=1)
    first = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    queued = [asyncio.create_task(b.submit(rows_of(i, 1), 1)) for i in range(3)]
    await until(lambda: b.queued_rows == 3)
    gate.set()
    await settle(first, *queued)
    assert model.batch_rows == [1, 3]
    for t in queued:
        assert code_of(t) is Code.INTERNAL


async def test_single_request_with_wrong_output_rows_is_internal() -> None:
    b = Batcher(FakeModel(result=lambda x: {"y": np.zeros((5, 2))}), "m")
    with pytest.raises(GatewayError) as e:
        await answered(b.submit(rows_of(0, 2), 2))
    assert e.value.code is Code.INTERNAL


async def test_close_fails_queued_requests_with_unavailable() -> None:
    gate = asyncio.Event()
    model = FakeModel(gate)
    b = Batcher(model, "m", max_batch_size=16, max_inflight=1)
    running = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    queued = [asyncio.create_task(b.submit(rows_of(2 + i, 1), 1)) for i in range(2)]
    await until(lambda: b.queued_rows == 2)
    closing = asyncio.create_task(b.close())
    await turns()
    assert not closing.done()  # close() lets the running batch finish
    gate.set()
    await answered(closing)
    await settle(running, *queued)
    assert running.result()["x"][0, 0] == 2.0  # in flight: finished normally
    for t in queued:
        assert code_of(t) is Code.UNAVAILABLE
    assert b.queued_rows == 0
    assert not model.saw(2) and not model.saw(3)


async def test_close_without_traffic() -> None:
    b = Batcher(FakeModel(), "m")
    await b.close()


async def test_submit_after_close_is_refused() -> None:
    model = FakeModel()
    b = Batcher(model, "m")
    await answered(b.submit(rows_of(1, 1), 1))
    await b.close()
    task = asyncio.create_task(b.submit(rows_of(2, 1), 1))
    await turns(100)
    try:
        assert task.done()
        assert code_of(task) is Code.UNAVAILABLE
    finally:
        task.cancel()


async def test_a_request_over_max_batch_size_is_refused_not_queued() -> None:
    b = Batcher(FakeModel(), "m", max_batch_size=4)
    try:
        # Driven by hand: the event loop must never get control while the loop task could spin.
        e = refused_at_once(b.submit(rows_of(1, 5), 5))
        assert e.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED)
    finally:
        if b._loop_task is not None:
            b._loop_task.cancel()


async def test_a_scalar_output_is_internal_not_a_hang() -> None:
    model = FakeModel(result=lambda x: {"y": np.float32(1.0)})
    b = Batcher(model, "m")
    task = asyncio.create_task(b.submit(rows_of(1, 1), 1))
    await until(model.called.is_set)
    dispatches = set(b._tasks)
    await turns(100)
    try:
        assert task.done()
        assert code_of(task) is Code.INTERNAL
    finally:
        task.cancel()
        for t in dispatches:  # retrieve a crashed dispatch's exception so asyncio does not log it at exit
            if t.done() and not t.cancelled():
                t.exception()


async def test_preferred_sizes_cut_a_batch_and_keep_the_rest_in_order() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        await gate.wait()
        return {"y": inputs["x"] * 2}

    b = Batcher(model, "m", max_batch_size=64, max_inflight=1, preferred_sizes=(4, 8))
    first = asyncio.create_task(b.submit({"x": np.zeros((1, 2), np.float32)}, 1))
    for _ in range(5):
        await asyncio.sleep(0)
    # While the first batch is in flight, 11 one-row requests queue up: 8 go next, then 3.
    rest = [asyncio.create_task(b.submit({"x": np.full((1, 2), i, np.float32)}, 1)) for i in range(11)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert calls == [1, 8, 3]
    assert [float(r["y"][0, 0]) for r in results[1:]] == [2.0 * i for i in range(11)]
