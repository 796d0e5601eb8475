"""Minimal asyncio HTTP/1.1 keep-alive client: pre-built request bytes over a connection pool.

General-purpose clients (httpx, aiohttp) spend more CPU per request than a small server does,
so the generator would measure itself. This one parses only the status line and body framing
(Content-Length or chunked); one response in ``parse_every`` is decoded as V2 JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Sequence
from typing import cast

from loadtests.http_wire import BadResponse, ResponseHead, parse_head, read_body


class _Connection(asyncio.Protocol):
    """One socket; at most one request outstanding (HTTP/1.1 without pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.sent_at = 0.0
        self._buffer = bytearray()
        self._head: ResponseHead | None = None
        self._waiter: asyncio.Future[tuple[ResponseHead, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection closed by server"))

    def request(self, payload: bytes) -> asyncio.Future[tuple[ResponseHead, bytes]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[ResponseHead, bytes]] = loop.create_future()
        if self.closed or self.transport.is_closing():
            # The server hung up while the socket sat idle; a write would vanish silently.
            waiter.set_exception(ConnectionResetError("connection closed by server"))
            return waiter
        self._waiter = waiter
        self.sent_at = time.perf_counter()
        self.transport.write(payload)
        return waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if self._head is None:
                parsed = parse_head(self._buffer)
                if parsed is None:
                    return
                self._head = parsed
            framed = read_body(self._buffer, self._head)
        except ValueError as exc:
            self.abort(BadResponse(str(exc)))
            return
        if framed is None:
            return
        body, used = framed
        head, self._head = self._head, None
        del self._buffer[:used]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((head, body))
        if head.close:
            self.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self, exc: Exception | None = None) -> None:
        """Drop the socket (a timed-out or closing connection cannot be reused)."""
        self.closed = True
        if exc is not None:
            self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    @property
    def busy(self) -> bool:
        return self._waiter is not None


class HttpSender:
    """Sends pool payloads by index; ``send`` returns None on success or an error code."""

    def __init__(
        self,
        host: str,
        port: int,
        payloads: Sequence[bytes],
        *,
        max_connections: int,
        timeout_s: float,
        parse_every: int = 64,
    ) -> None:
        self._host = host.strip("[]")
        self._port = port
        self._payloads = list(payloads)
        self._max_connections = max(1, max_connections)
        self._timeout_s = timeout_s
        self._parse_every = parse_every
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[_Connection]] = deque()
        self._inflight = 0
        self._responses = 0
        self._reaper: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        return self._inflight

    async def start(self, connections: int = 1, connect_timeout_s: float = 10.0) -> None:
        """Open ``connections`` sockets up front; fail fast if the target is unreachable."""
        count = min(max(1, connections), self._max_connections)
        async with asyncio.timeout(connect_timeout_s):
            opened = await asyncio.gather(*(self._open() for _ in range(count)))
        self._idle.extend(opened)
        # One sweeper enforces per-request timeouts: cheaper than a timer per request.
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self._host, self._port)
        self._all.add(conn)
        return conn

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        if len(self._all) + self._opening < self._max_connections:
            self._opening += 1
            try:
                return await self._open()
            finally:
                self._opening -= 1
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _release(self, conn: _Connection) -> None:
        if conn.closed:
            self._all.discard(conn)
            if self._waiters:
                # A closed socket frees a slot: open a replacement for the oldest waiter.
                asyncio.get_running_loop().create_task(self._open_for_waiter())
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _open_for_waiter(self) -> None:
        self._opening += 1
        try:
            conn = await self._open()
        except OSError as exc:
            # Fail one waiter rather than leave it parked until the drain timeout.
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
                    return
            return
        finally:
            self._opening -= 1
        self._release(conn)

    async def send(self, index: int, kind: int = -1) -> str | None:
        # `kind` (a mixed profile's class) needs nothing here: the class's headers are in the payload's bytes.
        self._inflight += 1
        try:
            try:
                conn = await self._acquire()
            except OSError:
                return "CONNECTION_ERROR"
            try:
                head, body = await conn.request(self._payloads[index])
            except TimeoutError:
                return "TIMEOUT"
            except BadResponse:
                return "BAD_RESPONSE"
            except OSError:
                return "CONNECTION_RESET"
            except asyncio.CancelledError:
                conn.abort()
                raise
            finally:
                self._release(conn)
        finally:
            self._inflight -= 1
        if head.status != 200:
            return f"HTTP_{head.status}"
        self._responses += 1
        if self._responses % self._parse_every == 0:
            return _check_body(head, body)
        return None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            deadline = time.perf_counter() - self._timeout_s
            for conn in list(self._all):
                if conn.busy and conn.sent_at < deadline:
                    conn.abort(TimeoutError())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()


def _check_body(head: ResponseHead, body: bytes) -> str | None:
    """A V2 response is a JSON object with ``outputs`` (binary: a JSON header, then tensors)."""
    text = body[: head.json_length] if head.json_length is not None else body
    try:
        doc = json.loads(text)
    except ValueError:
        return "BAD_RESPONSE"
    return None if isinstance(doc, dict) and "outputs" in doc else "BAD_RESPONSE"
