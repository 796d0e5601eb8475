"""Request deadlines with one loop timer per slot of time instead of one per request.

Every request through the data plane carries a deadline (the client's, or the door's default), so
`asyncio.timeout` cost a Timeout, a timer and a heap entry on each one. Here the requests due in the
same `slot_s` share one timer; arming is a set insert and disarming a set discard. A deadline fires
at most `slot_s` late, which is below what a client can tell apart from network jitter.

Cancellation follows `asyncio.timeout`: when the slot fires, each armed task is cancelled; the
`Expiry` then turns that cancellation (and only that one) into `expired()` being true, so that a
cancellation from elsewhere (a client that went away, shutdown) still propagates as CancelledError.
"""

from __future__ import annotations

import asyncio
import math
import time


class Expiry:
    __slots__ = ("_wheel", "cancelling", "fired", "slot", "task")

    def __init__(self, wheel: DeadlineWheel, task: asyncio.Task[object], slot: int) -> None:
        self._wheel = wheel
        self.task = task
        self.slot = slot
        self.cancelling = task.cancelling()  # cancel requests already pending before the deadline was armed
        self.fired = False

    def disarm(self) -> None:
        """Call when the guarded work ended, however it ended (a finally block)."""
        entries = self._wheel._slots.get(self.slot)
        if entries is not None:
            entries.discard(self)

    def expired(self) -> bool:
        """True inside `except CancelledError` when this deadline, and nothing else, cancelled the task."""
        return self.fired and self.task.uncancel() <= self.cancelling


class DeadlineWheel:
    def __init__(self, slot_s: float = 0.005) -> None:
        self.slot_s = slot_s
        self._slots: dict[int, set[Expiry]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, deadline: float) -> Expiry:
        """Cancels the current task once `deadline` (a time.monotonic() value) has passed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # timers belong to one loop
            self._loop, self._slots = loop, {}
        task = asyncio.current_task()
        assert task is not None, "deadlines guard tasks"
        slot = math.ceil((loop.time() + deadline - time.monotonic()) / self.slot_s)  # in the loop's clock
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = set()
            loop.call_at(slot * self.slot_s, self._fire, slot)
        expiry = Expiry(self, task, slot)
        entries.add(expiry)
        return expiry

    def _fire(self, slot: int) -> None:
        for expiry in self._slots.pop(slot, ()):
            expiry.fired = True
            expiry.task.cancel()

    @property
    def armed(self) -> int:
        return sum(len(s) for s in self._slots.values())
