"""The gateway-side micro-batcher: coalesces concurrent requests for one (model, version) into one call.

Adaptive without a tuning loop: a batch leaves as soon as a dispatch slot is free, carrying
everything queued (up to max_batch_size rows). At light load each request leaves alone at once;
under load, requests pile up while every slot is busy, so batches grow exactly as fast as the
replicas fall behind, and the call rate stays within max_inflight_batches in flight.
Bounded (max_queue_rows, then 'overloaded'), event-driven (no polling tick), drops cancelled
and expired requests before dispatch, and fans a failure out to every caller in the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contract.tensors import Arrays
from gateway.errors import Code, GatewayError, as_gateway_error, overloaded
from gateway.plane.batches import batch_key, concat, rows_match, split
from gateway.types import Timing

BatchCall = Callable[[Arrays], Awaitable[Arrays]]


@dataclass(slots=True)
class _Item:
    inputs: Arrays
    rows: int
    key: tuple[object, ...]  # requests merge only when every input agrees on dtype and trailing shape
    future: asyncio.Future[Arrays]
    deadline: float | None
    enqueued_at: float = 0.0
    timing: Timing | None = None


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one batch looked like, for metrics."""

    rows: int
    requests: int
    dropped: int


@dataclass
class Batcher:
    call: BatchCall
    name: str
    max_batch_size: int = 256
    max_wait_s: float = 0.0
    max_queue_rows: int = 8192
    max_inflight: int = 4
    preferred_sizes: tuple[int, ...] = ()  # ascending
    clock: Callable[[], float] = time.monotonic
    on_batch: Callable[[BatchStats], None] | None = None
    on_executed: Callable[[int, float], None] | None = None  # (rows, seconds) of each successful call

    _queue: deque[_Item] = field(default_factory=deque, init=False)
    _queued_rows: int = field(default=0, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)
    _loop_task: asyncio.Task[None] | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _closed: bool = field(default=False, init=False)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    async def submit(
        self, inputs: Arrays, rows: int, deadline: float | None = None, timing: Timing | None = None
    ) -> Arrays:
        """Queues one request and returns its rows of the batch's outputs; fills `timing` if given."""
        if self._closed:
            raise GatewayError(Code.UNAVAILABLE, f"{self.name} is shutting down")
        if rows > self.max_batch_size:
            raise GatewayError(
                Code.INVALID_ARGUMENT,
                f"{rows} rows is over {self.name}'s max_batch_size {self.max_batch_size}; split the request",
            )
        if self._queued_rows + rows > self.max_queue_rows:
            raise overloaded(self.name)
        if self._loop_task is None:
            self._slots = asyncio.Semaphore(self.max_inflight)
            self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())
        fut: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(inputs, rows, batch_key(inputs), fut, deadline, self.clock(), timing))
        self._queued_rows += rows
        self._wakeup.set()
        # A cancelled caller cancels its future; the loop skips it before dispatch.
        return await fut

    async def _run_loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if self.max_wait_s > 0:
                    await self._wait_for_company()
                batch, dropped = self._take()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(batch, dropped))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_company(self) -> None:
        until = self._queue[0].enqueued_at + self.max_wait_s
        while self._queued_rows < self.max_batch_size and self._queued_rows not in self.preferred_sizes:
            remaining = until - self.clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> tuple[list[_Item], int]:
        """Pops the next batch: FIFO items that share the head's key, up to max_batch_size rows."""
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        rows = dropped = 0
        now = self.clock()
        key = None
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # cancelled by its caller
                self._queued_rows -= item.rows
                dropped += 1
                continue
            if item.deadline is not None and now >= item.deadline:
                self._queued_rows -= item.rows
                dropped += 1
                item.future.set_exception(
                    GatewayError(Code.DEADLINE_EXCEEDED, f"deadline passed while queued for {self.name}")
                )
                continue
            if key is None:
                key = item.key
            if item.key != key or rows + item.rows > self.max_batch_size:
                kept.append(item)
                if rows + item.rows > self.max_batch_size:
                    break
                continue
            batch.append(item)
            rows += item.rows
            self._queued_rows -= item.rows
        kept.extend(self._queue)
        self._queue = kept
        if self.preferred_sizes and len(batch) > 1:
            batch = self._cut_to_preferred(batch, rows)
        return batch, dropped

    def _cut_to_preferred(self, batch: list[_Item], rows: int) -> list[_Item]:
        """Shortens a batch to the largest preferred size it can fill exactly; the rest goes back to the head."""
        fitting = [p for p in self.preferred_sizes if p <= rows]
        if not fitting or fitting[-1] == rows:
            return batch
        keep, total = 0, 0
        while keep < len(batch) and total + batch[keep].rows <= fitting[-1]:
            total += batch[keep].rows
            keep += 1
        if total != fitting[-1]:  # requests' row counts cannot make that size exactly
            return batch
        for item in reversed(batch[keep:]):
            self._queue.appendleft(item)
            self._queued_rows += item.rows
        return batch[:keep]

    async def _dispatch(self, batch: list[_Item], dropped: int) -> None:
        assert self._slots is not None
        try:
            try:
                merged = concat([it.inputs for it in batch])
                rows = sum(it.rows for it in batch)
                if self.on_batch is not None:
                    self.on_batch(BatchStats(rows, len(batch), dropped))
                started = self.clock()
                out = await self.call(merged)
                took = self.clock() - started
                if self.on_executed is not None:
                    self.on_executed(rows, took)
                for it in batch:
                    if it.timing is not None:
                        t = it.timing
                        t.queue_s, t.model_s, t.batch_rows, t.batch_requests = (
                            started - it.enqueued_at,
                            took,
                            rows,
                            len(batch),
                        )
                self._split(batch, out)
                return
            except Exception as exc:  # noqa: BLE001 - every caller must hear of any failure
                err = as_gateway_error(exc, self.name)
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
        finally:
            self._slots.release()
            if self._queue:
                self._wakeup.set()

    def _split(self, batch: list[_Item], out: Arrays) -> None:
        total = sum(it.rows for it in batch)
        if not rows_match(out, total):
            err = GatewayError(
                Code.INTERNAL, f"{self.name} returned outputs whose first dimension is not the batch size {total}"
            )
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        for it, part in zip(batch, split(out, [it.rows for it in batch]), strict=True):
            if not it.future.done():
                it.future.set_result(part)

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(GatewayError(Code.UNAVAILABLE, f"{self.name} is shutting down"))
        self._queued_rows = 0
