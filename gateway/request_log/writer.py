"""RequestLogWriter: the gateway's request log (`gateway.core.RequestLog`), group-committed by one thread.

append() on the event loop only samples and enqueues; a dedicated thread serializes every queued
record, writes them with one os.write (and one fsync in fsync mode) and wakes the waiting appends
with one call into the loop per batch. The loop never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from contract.request_log.segments import apply_retention
from gateway.errors import Code, GatewayError
from gateway.request_log.record import RecordEncoder
from gateway.request_log.sampling import Sampler
from gateway.request_log.settings import RequestLogSettings
from gateway.request_log.sink import SegmentSink
from gateway.request_log.stats import LogStats
from gateway.types import RequestRecord

log = logging.getLogger("gateway.request_log")

# A queued record and the future its append() awaits (None in async mode); (None, future) is a flush marker.
_Item = tuple[RequestRecord | None, "asyncio.Future[None] | None"]


class _SharedFuture(asyncio.Future[None]):
    """The future that every append of one take awaits. A task awaiting a future cancels it when the task is
    cancelled; this one refuses, so that one caller going away cannot fail the others waiting on it (the
    cancelled caller still gets its CancelledError, once the write it waits for is done)."""

    def cancel(self, msg: object = None) -> bool:
        return False


def _settle(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(GatewayError(Code.UNAVAILABLE, error, retry_after_s=1.0))


class RequestLogWriter:
    def __init__(
        self,
        settings: RequestLogSettings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sink: SegmentSink | None = None,
        seed: int | None = None,
    ) -> None:
        """clock: wall-clock seconds (rotation age, retention); sink and seed let tests steer the disk and sampling."""
        self.settings = s = settings
        self._clock = clock
        self._sink = sink or SegmentSink(
            s.dir,
            s.gateway_id or socket.gethostname(),
            rotate_bytes=s.rotate_bytes,
            rotate_s=s.rotate_s,
            sync_dirs=s.durability == "fsync",
            clock=clock,
        )
        self._encoder = RecordEncoder(self._sink.gateway_id, s.redact_inputs, s.max_record_bytes)
        self._sampler = Sampler(s.sample, seed)
        self._wait = s.durability != "async"
        self._fsync = s.durability == "fsync"
        self._reject = s.on_full == "reject"
        self._max = s.max_queue_records
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Item] = []
        self._background: list[_Item] = []  # written after the pending items taken with them
        self._depth = 0  # accepted and not yet written: the pending items plus the batch being written
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stats = LogStats(registry)
        self.healthy = True
        self.last_error = ""
        self._next_retry = 0.0
        self._unsettled: list[_Item] = []  # the batch being written, until its appends are answered
        self._waiting: list[_Item] = []  # background records of the batch being written, not yet taken
        # Appends queued between two takes by the writer are written together and share one future per
        # list (and loop): one future to make, settle and wake instead of one per record.
        self._pending_future: asyncio.Future[None] | None = None
        self._background_future: asyncio.Future[None] | None = None
        self._idle = False  # the writer waits on _cond: only then does an append need to notify it

    # --- the event loop's side ------------------------------------------------------------
    def start(self) -> RequestLogWriter:
        """Locks this gateway's folder and starts the writer thread; an unwritable root only makes it unhealthy."""
        if self._thread is None:
            try:
                self._sink.prepare()  # mkdir, lock, one directory read: start-up only
            except OSError as exc:
                self._set_unhealthy(exc)
            self._encoder.gateway_id = self._sink.gateway_id
            self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
            self._thread.start()
        return self

    @property
    def gateway_id(self) -> str:
        return self._sink.gateway_id

    async def append(self, record: RequestRecord, *, background: bool = False) -> None:
        """Returns once the record is as durable as `durability` promises; raises UNAVAILABLE (policy
        reject) when it cannot be logged: queue full, directory unwritable, or the log closed."""
        if self._thread is None:
            self.start()
        if not self._sampler.keep(record.model, record.code):
            self._stats.sampled_out += 1  # only ever counted here, on the loop
            return
        fut: asyncio.Future[None] | None = None
        with self._cond:
            if self._closing:
                reason = "closed"
            elif not self.healthy:
                reason = "io_error"
            elif self._depth >= self._max:
                reason = "queue_full"
            else:
                if self._wait:
                    fut = self._background_future if background else self._pending_future
                    loop = asyncio.get_running_loop()
                    if fut is None or fut.get_loop() is not loop:
                        fut = _SharedFuture(loop=loop)
                        if background:
                            self._background_future = fut
                        else:
                            self._pending_future = fut
                (self._background if background else self._pending).append((record, fut))
                self._depth += 1
                self._stats.queue_gauge.set(self._depth)  # ~0.3 us; set here too: a writer stuck on disk cannot
                if self._idle:
                    self._idle = False
                    self._cond.notify()
                reason = ""
        if reason:
            self._refuse(reason)
        elif fut is not None:
            await fut

    def _refuse(self, reason: str) -> None:
        if not self._reject:
            self._stats.add_dropped(reason)
            return
        self._stats.add_rejected()
        what = {
            "closed": "is closed",
            "io_error": f"cannot write: {self.last_error}",
            "queue_full": f"is full ({self._max} records waiting to be written)",
        }[reason]
        raise GatewayError(
            Code.UNAVAILABLE,
            f"request log {what}; the request is refused so that no answered request goes unlogged: retry later",
            retry_after_s=1.0,
        )

    async def flush(self) -> None:
        """Returns once every record accepted before the call is written (or failed), and rotation by age is done."""
        fut = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._closing:
                return
            self._pending.append((None, fut))
            self._idle = False
            self._cond.notify()
        await fut

    async def close(self) -> None:
        """Stops accepting records, writes every accepted one, closes the segment and releases the folder."""
        with self._cond:
            self._closing = True
            self._idle = False
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        else:
            self._sink.close()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            depth = self._depth
        return {
            **self._stats.as_dict(),
            "queue_depth": depth,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "gateway_id": self.gateway_id,
            "segment": str(self._sink.path) if self._sink.path else "",
        }

    # --- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        self._retention()  # what earlier runs left behind; on this thread, it may delete many files
        while True:
            with self._cond:
                while not self._pending and not self._background and not self._closing:
                    self._idle = True
                    woken = self._cond.wait(self._idle_timeout())
                    self._idle = False
                    if not woken:
                        break  # timed out: rotate by age, or retry an unhealthy folder
                batch, self._pending = self._pending, []
                later, self._background = self._background, []
                # Appends from now on are in the next take: they get new futures.
                self._pending_future = self._background_future = None
                closing = self._closing
                self._stats.queue_gauge.set(self._depth)
            try:
                self._process(batch, later)
            except Exception as exc:  # a bug here must fail its batch, not hang every append
                log.exception("request log writer failed")
                self._set_unhealthy(exc)
                self._fail(self._unsettled + self._waiting, f"request log failed: {exc!r}")
                self._waiting = []
                _wake([f for r, f in batch if r is None and f is not None], None)
            if closing:  # no append is accepted once closing is set, so this batch was the last
                break
        try:
            self._sink.close()
        except OSError as exc:
            self._set_unhealthy(exc)

    def _idle_timeout(self) -> float | None:
        if not self.healthy:
            return self.settings.retry_s
        if self._sink.is_open:
            # Capped so that a jump of the clock cannot postpone rotation by age for long.
            return min(1.0, max(0.01, self._sink.opened_at + self._sink.rotate_s - self._clock()))
        return None

    def _process(self, batch: list[_Item], later: list[_Item]) -> None:
        """Writes `batch` (records and flush markers), then the background records `later`: callers wait for
        their own records, so foreground ones are written and their callers woken first."""
        now = self._clock()
        closed = self._sink.due(now) and self._close_segment()
        records = [item for item in batch if item[0] is not None]
        self._waiting = later  # until _write takes them: a bug while writing `records` must fail these too
        if records:
            closed = self._write(records) or closed
        self._waiting = []
        if later:
            closed = self._write(later) or closed
        if not records and not later and not self.healthy and now >= self._next_retry:
            self._probe()
        if closed:
            self._retention()  # after the appends are woken: they need not wait for it
        _wake([f for r, f in batch if r is None and f is not None], None)  # flush markers: everything is done

    def _write(self, records: list[_Item]) -> bool:
        """Writes and wakes one batch; True when it filled the segment, which is then closed."""
        self._unsettled = records  # until released: what a crash of this code must still answer
        lines, truncated = [], 0
        try:
            if not self._sink.is_open:
                self._sink.prepare()  # may lock a different folder after an outage: records must name it
                self._encoder.gateway_id = self._sink.gateway_id
            for record, _ in records:
                assert record is not None
                line, cut = self._encoder.encode(record)
                lines.append(line)
                truncated += cut
            data = b"".join(lines)
            self._sink.write(data)
            if self._fsync:
                self._sink.sync()
        except OSError as exc:
            self._sink.abandon()  # a later batch goes to a fresh segment, never after a torn line
            self._set_unhealthy(exc)
            self._fail(records, f"request log cannot write: {self.last_error}")
            return False
        self._set_healthy()
        self._stats.add_written(len(records), len(data), truncated)
        # Closed before the appends are woken, so that a caller sees the segment it filled as closed.
        closed = self._sink.due(self._clock()) and self._close_segment()
        self._unsettled = []
        self._release(len(records))
        _wake([f for _, f in records if f is not None], None)
        return closed

    def _fail(self, records: list[_Item], error: str) -> None:
        self._unsettled = []
        futures = [f for _, f in records if f is not None]
        if self._reject:
            self._stats.add_rejected(len(futures))
            self._stats.add_dropped("io_error", len(records) - len(futures))  # async mode: nobody to tell
        else:
            self._stats.add_dropped("io_error", len(records))
        self._release(len(records))  # before the wake, so that a woken caller sees the counts settled
        _wake(futures, error if self._reject else None)

    def _release(self, n: int) -> None:
        with self._cond:
            self._depth -= n
            self._stats.queue_gauge.set(self._depth)

    def _close_segment(self) -> bool:
        try:
            closed = self._sink.close_segment()
        except OSError as exc:  # close() reporting a late write error: the data may be lost, say so
            self._set_unhealthy(exc)
            return False
        if closed:
            self._stats.segments_closed += 1
        return closed

    def _retention(self) -> None:
        s, gw_dir = self.settings, self._sink.dir
        if gw_dir is None or (s.retain_bytes is None and s.retain_s is None):
            return
        try:
            apply_retention(gw_dir, s.retain_bytes, s.retain_s, self._clock())
        except OSError as exc:
            log.warning("request log retention in %s failed: %s", gw_dir, exc)

    def _probe(self) -> None:
        """An unhealthy log tries its folder again: it is healthy once it can create a segment there."""
        try:
            self._sink.write(b"")
        except OSError as exc:
            self._sink.abandon()
            self._set_unhealthy(exc)
        else:
            self._encoder.gateway_id = self._sink.gateway_id
            self._set_healthy()

    def _set_unhealthy(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
        self._next_retry = self._clock() + self.settings.retry_s
        if self.healthy:
            log.error("request log unhealthy: %s", self.last_error)
        self.healthy = False
        self._stats.healthy_gauge.set(0)

    def _set_healthy(self) -> None:
        if not self.healthy:
            log.warning("request log healthy again (%s)", self._sink.path)
            self.healthy = True
            self._stats.healthy_gauge.set(1)


def _wake(futures: list[asyncio.Future[None]], error: str | None) -> None:
    """Settles futures on their own loops: one call into each loop for a whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for f in dict.fromkeys(futures):  # records appended together share a future: settle it once
        by_loop.setdefault(f.get_loop(), []).append(f)
    for loop, fs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, fs, error)
