"""gateway.plane.deadlines: shared-slot deadlines cancel exactly the requests that ran out of time."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.plane.deadlines import DeadlineWheel


async def guarded(wheel: DeadlineWheel, deadline: float, work: asyncio.Future[str]) -> str:
    """The data plane's pattern: arm, await, turn an expiry into a result the test can see."""
    expiry = wheel.arm(deadline)
    try:
        return await work
    except asyncio.CancelledError:
        if not expiry.expired():
            raise
        return "expired"
    finally:
        expiry.disarm()


async def test_work_past_its_deadline_is_stopped_and_says_so() -> None:
    wheel = DeadlineWheel(slot_s=0.005)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    assert await guarded(wheel, time.monotonic() + 0.02, never) == "expired"
    assert wheel.armed == 0


async def test_work_done_in_time_is_untouched_and_disarmed() -> None:
    wheel = DeadlineWheel(slot_s=0.005)
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    done.set_result("answer")
    tasks = [asyncio.create_task(guarded(wheel, time.monotonic() + 3600.0, done)) for _ in range(100)]
    assert await asyncio.gather(*tasks) == ["answer"] * 100
    assert wheel.armed == 0  # nothing is held until the far-away slot fires


async def test_many_requests_in_one_slot_share_it_and_each_expires() -> None:
    wheel = DeadlineWheel(slot_s=0.05)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 0.01
    futures: list[asyncio.Future[str]] = [loop.create_future() for _ in range(50)]
    tasks = [asyncio.create_task(guarded(wheel, deadline, f)) for f in futures]
    await asyncio.sleep(0)
    assert len(wheel._slots) == 1 and wheel.armed == 50
    futures[0].set_result("in time")  # one answers before the slot fires
    assert await asyncio.gather(*tasks) == ["in time"] + ["expired"] * 49


async def test_a_cancel_from_elsewhere_is_not_mistaken_for_the_deadline() -> None:
    wheel = DeadlineWheel(slot_s=0.005)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(guarded(wheel, time.monotonic() + 3600.0, never))
    await asyncio.sleep(0)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wheel.armed == 0


async def test_a_cancel_from_elsewhere_wins_even_when_the_deadline_also_fired() -> None:
    wheel = DeadlineWheel(slot_s=0.005)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(guarded(wheel, time.monotonic() + 3600.0, never))
    await asyncio.sleep(0)
    task.cancel()  # shutdown cancels it ...
    (slot,) = wheel._slots
    wheel._fire(slot)  # ... in the same turn as its deadline fires
    with pytest.raises(asyncio.CancelledError):
        await task
