"""One generator process: drives open- or closed-loop load on its own event loop.

Open loop: each request has an intended send time and its latency is measured from that time,
so a server (or generator) stall shows up in the numbers instead of silently delaying sends.
"""

from __future__ import annotations

import asyncio
import gc
import math
import resource
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from loadtests.recorder import Recorder, WorkerResult
from loadtests.schedule import offsets

ProgressFn = Callable[[dict[str, float]], None]
_YIELD_EVERY = 64  # when behind schedule, let responses run at least this often
# Event-loop timers fire up to ~1 ms late (epoll has millisecond resolution), so requests are
# released up to this much early and timed from their actual start; late ones are timed from
# their intended start, which is what keeps a stall from hiding (coordinated omission).
_EARLY_S = 0.001


class Sender(Protocol):
    """A protocol client bound to one target and one pre-built payload pool."""

    @property
    def inflight(self) -> int: ...
    async def start(self, connections: int = 1, connect_timeout_s: float = 10.0) -> None: ...
    async def send(self, index: int, kind: int = -1) -> str | None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ClassPlan:
    """One traffic class of a mixed profile as a worker sends it."""

    name: str
    weight: float
    deadline_s: float | None
    metadata: tuple[tuple[str, str], ...]  # gRPC metadata; HTTP payloads carry these headers in their bytes
    first: int  # the class's requests are payloads[first : first + count]
    count: int


@dataclass(frozen=True)
class WorkerPlan:
    """This process's share of a run: concurrency, caps and in-flight bound already divided;
    ``rate`` is the whole run's, which the schedule divides by ``shares``."""

    protocol: str
    host: str
    port: int
    payloads: Sequence[bytes]
    mode: str  # "open" or "closed"
    rate: float = 0.0  # the whole run's rate; this process sends rate / shares
    arrival: str = "poisson"
    share: int = 0
    shares: int = 1
    concurrency: int = 1
    warmup_s: float = 0.0
    duration_s: float = 10.0
    max_requests: int | None = None
    max_inflight: int = 4096
    connections: int = 0  # HTTP sockets / gRPC channels; 0 = derive from load
    timeout_s: float = 30.0
    drain_timeout_s: float = 5.0
    seed: int | None = None
    streaming: bool = False  # gRPC ModelStreamInfer (one stream per STREAM_DEPTH in flight) instead of unary calls
    shared_memory: bool = False  # gRPC inputs in a system shared memory region registered by this process
    classes: tuple[ClassPlan, ...] = ()  # a mixed profile: each request draws its class by weight


def make_sender(plan: WorkerPlan) -> Sender:
    """The client for the plan's protocol, sized for its load unless ``connections`` is set."""
    if plan.mode == "closed":
        wanted = plan.connections or (plan.concurrency if plan.protocol == "http" else math.ceil(plan.concurrency / 64))
    else:
        wanted = plan.connections or (
            min(256, plan.max_inflight) if plan.protocol == "http" else min(16, math.ceil(plan.max_inflight / 64))
        )
    if plan.protocol == "grpc":
        from loadtests.grpc_client import GrpcSender
        from loadtests.grpc_stream_client import STREAM_DEPTH, GrpcStreamSender

        address, payloads = f"{plan.host}:{plan.port}", plan.payloads
        if plan.shared_memory:
            from loadtests.shm_payloads import SharedInputs

            payloads = SharedInputs.register(address, payloads).payloads
        if plan.streaming:
            # One stream per STREAM_DEPTH requests in flight (a stream carries one message at a time each way).
            load = plan.concurrency if plan.mode == "closed" else min(plan.max_inflight, 1024)
            streams = max(1, math.ceil(load / STREAM_DEPTH))
            return GrpcStreamSender(address, payloads, max_channels=wanted, streams=streams, timeout_s=plan.timeout_s)
        return GrpcSender(
            address,
            payloads,
            max_channels=wanted,
            timeout_s=plan.timeout_s,
            class_calls=[(c.metadata, c.deadline_s or plan.timeout_s) for c in plan.classes],
        )
    from loadtests.http_client import HttpSender

    return HttpSender(plan.host, plan.port, plan.payloads, max_connections=wanted, timeout_s=plan.timeout_s)


class _Run:
    def __init__(self, plan: WorkerPlan, sender: Sender, start: float) -> None:
        self.plan = plan
        self.sender = sender
        self.window_start = start + plan.warmup_s
        self.end = self.window_start + plan.duration_s
        self.rec = Recorder(self.window_start, [c.deadline_s for c in plan.classes])
        self.stop_at: float | None = None  # set when the request cap ends the window early
        self._next = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._kinds = _class_draws(plan) if plan.classes else None
        self._next_of = [c.first for c in plan.classes]

    def _payload(self) -> int:
        index = self._next
        self._next = index + 1 if index + 1 < len(self.plan.payloads) else 0
        return index

    def _pick(self) -> tuple[int, int]:
        """The next request: (payload index, class index; -1 without a mixed profile)."""
        if self._kinds is None:
            return self._payload(), -1
        kind = next(self._kinds)
        cls = self.plan.classes[kind]
        index = self._next_of[kind]
        self._next_of[kind] = index + 1 if index + 1 < cls.first + cls.count else cls.first
        return index, kind

    def _cap_reached(self) -> bool:
        cap = self.plan.max_requests
        return cap is not None and self.rec.result.sent >= cap

    async def _one(self, index: int, kind: int, intended: float, measured: bool) -> None:
        """One open-loop request, timed from its intended send time (or actual, if earlier)."""
        started = time.perf_counter()
        if measured:
            self.rec.lag(started - intended)
        if started < intended:
            intended = started
        try:
            code = await _safe_send(self.sender, index, kind)
        except asyncio.CancelledError:
            if measured:
                self.rec.failure("TIMEOUT", time.perf_counter(), kind)
            raise
        if measured:
            if code is None:
                self.rec.success(intended, time.perf_counter(), kind)
            else:
                self.rec.failure(code, time.perf_counter(), kind)

    async def open_loop(self, start: float) -> None:
        plan, rec, result = self.plan, self.rec, self.rec.result
        loop = asyncio.get_running_loop()
        since_yield = 0
        for offset in offsets(plan.arrival, plan.rate, share=plan.share, shares=plan.shares, seed=plan.seed):
            intended = start + offset
            if intended >= self.end:
                break
            now = time.perf_counter()
            if intended > now + _EARLY_S:
                await asyncio.sleep(intended - now - _EARLY_S)
                since_yield = 0
            elif since_yield >= _YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            since_yield += 1
            measured = intended >= self.window_start
            if measured:
                if self._cap_reached():
                    self.stop_at = intended
                    break
                result.scheduled += 1
            if len(self._pending) >= plan.max_inflight:
                # The bound keeps a dead server from eating all memory; these never went out.
                if measured:
                    result.late += 1
                continue
            index, kind = self._pick()
            if measured:
                self.rec.sent(kind)
            task = loop.create_task(self._one(index, kind, intended, measured))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            if len(self._pending) > result.peak_inflight:
                result.peak_inflight = len(self._pending)
        rec.roll(int(time.perf_counter() - self.window_start))

    async def _closed_worker(self) -> None:
        while True:
            sent_at = time.perf_counter()
            if sent_at >= self.end or self.stop_at is not None:
                return
            measured = sent_at >= self.window_start
            index, kind = self._pick()
            if measured:
                if self._cap_reached():
                    self.stop_at = sent_at
                    return
                self.rec.sent(kind)
            try:
                code = await _safe_send(self.sender, index, kind)
            except asyncio.CancelledError:
                if measured:
                    self.rec.failure("TIMEOUT", time.perf_counter(), kind)
                raise
            if measured:
                done = time.perf_counter()
                if code is None:
                    self.rec.success(sent_at, done, kind)
                else:
                    self.rec.failure(code, done, kind)

    async def closed_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.plan.concurrency):
            task = loop.create_task(self._closed_worker())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        self.rec.result.peak_inflight = self.plan.concurrency
        # Workers return by themselves when the request cap is hit; otherwise their last
        # request (sent before the end) finishes during the drain.
        await asyncio.wait(set(self._pending), timeout=max(0.0, self.end - time.perf_counter()))

    async def drain(self) -> None:
        """Bounded wait for in-flight requests; the rest are cancelled and count as TIMEOUT."""
        if not self._pending:
            return
        _, still = await asyncio.wait(set(self._pending), timeout=self.plan.drain_timeout_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=5.0)


def _class_draws(plan: WorkerPlan) -> Iterator[int]:
    """Class indices drawn by weight, in numpy chunks (one int per request on the send path); each
    process of a run draws its own stream."""
    weights = np.array([c.weight for c in plan.classes], dtype=float)
    rng = np.random.default_rng(None if plan.seed is None else [plan.seed, plan.share, 1])
    while True:
        yield from rng.choice(len(weights), size=4096, p=weights / weights.sum()).tolist()


async def _safe_send(sender: Sender, index: int, kind: int = -1) -> str | None:
    try:
        return await sender.send(index, kind)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any client failure is one counted error
        return f"CLIENT_{type(exc).__name__}"


async def run_worker(
    plan: WorkerPlan,
    progress: ProgressFn | None = None,
    ready: Callable[[], Awaitable[float]] | None = None,
    progress_every_s: float = 0.5,
) -> WorkerResult:
    """Run this process's share of the load.

    ``ready`` is awaited once connected and returns the wall-clock (time.time()) start, which
    lines up the schedules of several processes.
    """
    sender = make_sender(plan)
    # Open loop: enough sockets for this share of the rate at 10 ms per request; more open
    # on demand, but opening them mid-run would add connect time to early latencies.
    expected = plan.concurrency if plan.mode == "closed" else math.ceil(plan.rate / plan.shares / 100)
    # --connections opens that many at once: a server of several processes sharing a port (SO_REUSEPORT)
    # spreads connections, not requests, so they must exist before the load starts.
    await sender.start(plan.connections or (expected if plan.protocol == "http" else math.ceil(expected / 64)))
    # Setup objects (imports, the payload pool) move out of the collector's reach, so a full
    # collection during the run costs microseconds instead of a scheduling hiccup.
    gc.collect()
    gc.freeze()
    cpu0 = _cpu_seconds()
    if ready is not None:
        await asyncio.sleep(max(0.0, await ready() - time.time()))
    start = time.perf_counter()
    run = _Run(plan, sender, start)
    ticker = asyncio.get_running_loop().create_task(_tick(run, start, progress, progress_every_s)) if progress else None
    try:
        if plan.mode == "open":
            await run.open_loop(start)
        else:
            await run.closed_loop()
        window_end = run.stop_at if run.stop_at is not None else run.end
        await run.drain()
    finally:
        if ticker is not None:
            ticker.cancel()
        await sender.close()
        gc.unfreeze()
    now = time.perf_counter()
    result = run.rec.finish(now)
    result.window_s = max(1e-9, min(window_end, now) - run.window_start)
    result.wall_s = now - start
    result.cpu_s = _cpu_seconds() - cpu0
    if progress:
        progress(_snapshot(run, start, now))
    return result


async def _tick(run: _Run, start: float, progress: ProgressFn, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        progress(_snapshot(run, start, time.perf_counter()))


def _snapshot(run: _Run, start: float, now: float) -> dict[str, float]:
    result = run.rec.result
    qps, p99_ms = run.rec.last_second(now) if now >= run.window_start else (0, 0.0)
    return {
        "elapsed_s": now - start,
        "sent": result.sent,
        "ok": result.ok,
        "errors": sum(result.errors_by_code.values()),
        "late": result.late,
        "qps": qps,
        "p99_ms": p99_ms,
        "inflight": run.sender.inflight,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
