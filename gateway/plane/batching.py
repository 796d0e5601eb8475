"""The gateway-side micro-batcher: coalesces concurrent requests for one (model, version) into one call.

Adaptive without a tuning loop: a batch leaves as soon as a dispatch slot is free, carrying
everything queued (up to max_batch_size rows). At light load each request leaves alone at once;
under load, requests pile up while every slot is busy, so batches grow exactly as fast as the
replicas fall behind, and the call rate stays within max_inflight_batches in flight.
Bounded (max_queue_rows, then 'overloaded' or the lowest class is shed), event-driven (no polling tick),
serves priority classes in order (gateway/plane/scheduler.py), refuses at once a request its predicted
answer time would put past its deadline, frees a cancelled caller's place at once, drops expired requests
before dispatch, and fans a failure out to every caller in the batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contract.tensors import Arrays
from gateway.errors import Code, GatewayError, Refusal, as_gateway_error, overloaded, predicted_miss, shed
from gateway.plane.batches import batch_key, concat, rows_match, split
from gateway.plane.scheduler import ClassQueue, Item
from gateway.types import Timing

BatchCall = Callable[[Arrays], Awaitable[Arrays]]
_MIN_CALLS = 3  # timed calls before the batcher predicts answer times
_RATE_TAU_S = 1.0  # time constant of each class's arrival rate estimate


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
    classes: tuple[str, ...] = ("default",)  # priority class names, highest first
    lower_share: float = 0.0  # at least this share of batches is led by a waiting lower class
    fair: bool = True  # round robin between a class's tenants (False: arrival order)
    admission: bool = True  # refuse at once what the predicted answer time puts past its deadline
    on_refusal: Callable[[Refusal, int, str], None] | None = None  # (reason, class, tenant) of every refusal
    on_executed: Callable[[int, float], None] | None = None  # (rows, seconds) of each successful call

    _queue: ClassQueue = field(init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)
    _loop_task: asyncio.Task[None] | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _closed: bool = field(default=False, init=False)
    _call_s: float = field(default=0.0, init=False)  # moving average of one call's time
    _calls: int = field(default=0, init=False)
    _rates: list[float] = field(init=False)  # rows/s queued per class, exponentially weighted
    _rates_at: float = field(default=0.0, init=False)
    _cancelled: int = field(default=0, init=False)  # callers gone from the queue since the last batch was cut

    def __post_init__(self) -> None:
        self._queue = ClassQueue(len(self.classes), self.lower_share, self.fair)
        self._rates = [0.0] * len(self.classes)

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def predict_s(self, rows: int, level: int = 0) -> float | None:
        """Seconds until a request of `rows` rows of this class would be answered if queued now; None until
        a few calls have been timed. The queue ahead of it (its class and higher) leaves in batches of
        max_batch_size, max_inflight at a time; a slot frees halfway through a call on average. Below the
        highest class, the higher classes' arrivals keep overtaking it, so its queue leaves only at the
        capacity they leave over (at least the lower classes' share)."""
        if self._calls < _MIN_CALLS:
            return None
        ahead = self._queue.rows_ahead(level) + rows
        busy = len(self._tasks) >= self.max_inflight
        if not busy and ahead <= self.max_batch_size:
            return self._call_s + self.max_wait_s
        waves = math.ceil(math.ceil(ahead / self.max_batch_size) / self.max_inflight)
        slowdown = 1.0
        if level > 0 and self._call_s > 0:
            capacity = self.max_batch_size * self.max_inflight / self._call_s  # rows/s
            higher = sum(self._rates[:level]) * math.exp(-(self.clock() - self._rates_at) / _RATE_TAU_S)
            left = max(capacity - higher, self.lower_share * capacity)
            if left <= 0:
                return math.inf
            slowdown = capacity / left
        return self._call_s * (waves * slowdown + (0.5 if busy else 0.0)) + self.max_wait_s

    def _count_arrival(self, level: int, rows: int, now: float) -> None:
        decay = math.exp(-(now - self._rates_at) / _RATE_TAU_S) if now > self._rates_at else 1.0
        rates = self._rates
        for i in range(len(rates)):
            rates[i] *= decay
        rates[level] += rows / _RATE_TAU_S
        self._rates_at = max(now, self._rates_at)

    async def submit(
        self,
        inputs: Arrays,
        rows: int,
        deadline: float | None = None,
        timing: Timing | None = None,
        level: int = 0,
        tenant: str = "",
    ) -> Arrays:
        """Queues one request and returns its rows of the batch's outputs; fills `timing` if given.
        `level` is its priority class (an index into `classes`, 0 = highest), `tenant` its share of the class."""
        if self._closed:
            raise GatewayError(Code.UNAVAILABLE, f"{self.name} is shutting down")
        if rows > self.max_batch_size:
            raise GatewayError(
                Code.INVALID_ARGUMENT,
                f"{rows} rows is over {self.name}'s max_batch_size {self.max_batch_size}; split the request",
            )
        now = self.clock()
        if deadline is not None and self.admission:
            predicted = self.predict_s(rows, level)
            if predicted is not None and now + predicted > deadline:
                self._refused(Refusal.PREDICTED_MISS, level, tenant)
                raise predicted_miss(self.name, predicted, deadline - now)
        if self._queue.rows + rows > self.max_queue_rows:
            victims = self._queue.make_room(rows, self.max_queue_rows, level, tenant)
            if victims is None:
                self._refused(Refusal.QUEUE_FULL, level, tenant)
                raise overloaded(self.name)
            for victim in victims:
                self._refused(Refusal.SHED, victim.level, victim.tenant)
                if not victim.future.done():
                    victim.future.set_exception(shed(self.name, self.classes[victim.level]))
        if self._loop_task is None:
            self._slots = asyncio.Semaphore(self.max_inflight)
            self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())
        fut: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        item = Item(inputs, rows, batch_key(inputs), fut, deadline, now, timing, level, tenant)
        self._queue.push(item)
        if len(self._rates) > 1:
            self._count_arrival(level, rows, now)
        self._wakeup.set()
        try:
            return await fut
        except asyncio.CancelledError:
            # A caller that went away (its deadline, the client) frees its place in the queue now, not when the
            # loop would reach it: dead requests must not fill the queue and turn live ones away.
            if not item.gone:
                self._queue.discard(item)
                self._cancelled += 1
                item.inputs = {}  # its deque keeps the entry until it reaches an end, not the tensors
            raise

    def _refused(self, reason: Refusal, level: int, tenant: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(reason, level, tenant)

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
        oldest = min((it.enqueued_at for it in self._queue.live()), default=self.clock())
        until = oldest + self.max_wait_s
        tightest = self._queue.tightest_deadline()
        if tightest is not None:  # the most urgent request must still make it after the call itself
            until = min(until, tightest - self._call_s)
        while self._queue.rows < self.max_batch_size and self._queue.rows not in self.preferred_sizes:
            remaining = until - self.clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> tuple[list[Item], int]:
        """Cuts the next batch: items in service order that share the first one's key, up to max_batch_size
        rows. Drops cancelled ones, and those whose deadline passed or falls before one call could end."""
        batch: list[Item] = []
        rows = 0
        dropped, self._cancelled = self._cancelled, 0
        now = self.clock()
        late = now + (self._call_s if self.admission and self._calls >= _MIN_CALLS else 0.0)
        key = None
        for item in self._queue.service_order():
            if item.future.done():  # cancelled by its caller
                self._queue.discard(item)
                dropped += 1
                continue
            if item.deadline is not None and late >= item.deadline:
                self._queue.discard(item)
                dropped += 1
                self._refused(Refusal.EXPIRED, item.level, item.tenant)
                item.future.set_exception(
                    GatewayError(
                        Code.DEADLINE_EXCEEDED,
                        f"deadline passed (or would pass during the call) while queued for {self.name}",
                        refusal=Refusal.EXPIRED,
                    )
                )
                continue
            if key is None:
                key = item.key
            if item.key != key:
                continue
            if rows + item.rows > self.max_batch_size:
                break
            batch.append(item)
            rows += item.rows
            self._queue.discard(item)
        if self.preferred_sizes and len(batch) > 1:
            batch = self._cut_to_preferred(batch, rows)
        self._queue.batch_done(batch)
        return batch, dropped

    def _cut_to_preferred(self, batch: list[Item], rows: int) -> list[Item]:
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
            self._queue.requeue(item)
        return batch[:keep]

    async def _dispatch(self, batch: list[Item], dropped: int) -> None:
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
                self._call_s = took if self._calls == 0 else 0.8 * self._call_s + 0.2 * took
                self._calls += 1
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

    def _split(self, batch: list[Item], out: Arrays) -> None:
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
        for item in list(self._queue.live()):
            self._queue.discard(item)
            if not item.future.done():
                item.future.set_exception(GatewayError(Code.UNAVAILABLE, f"{self.name} is shutting down"))
