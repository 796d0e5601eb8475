"""gRPC streaming sender: pre-serialized ``ModelInferRequest`` bytes on a few ``ModelStreamInfer`` calls.

Answers are matched by id (a server may answer out of order); an ``error_message`` counts as an error.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from loadtests.grpc_client import _identity, _wait_ready

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
STREAM_DEPTH = 8  # requests in flight per stream the load tool opens


def _id_field(request_id: str) -> bytes:
    data = request_id.encode()
    return b"\x1a" + bytes([len(data)]) + data  # ids stay under 128 bytes: a one-byte length


def error_code(message: str) -> str:
    if message.startswith("[") and "]" in message:
        return message[1 : message.index("]")]
    return "STREAM_ERROR"


class _Stream:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[str | None]] = {}
        method = channel.stream_stream(STREAM_METHOD, request_serializer=_identity, response_deserializer=_identity)
        self.call = method(self._requests())
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _requests(self) -> AsyncIterator[bytes]:
        while (message := await self.outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        failure = "STREAM_CLOSED"
        try:
            async for raw in self.call:
                try:
                    reply = service_pb2.ModelStreamInferResponse.FromString(raw)
                except DecodeError:
                    continue
                fut = self.pending.pop(reply.infer_response.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(error_code(reply.error_message) if reply.error_message else None)
        except grpc.aio.AioRpcError as exc:
            failure = str(exc.code().name)
        except asyncio.CancelledError:
            pass
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result(failure)
        self.pending.clear()


class GrpcStreamSender:
    """Sends pool payloads by index over a few long-lived streams per channel; ``send`` returns None or an
    error code name."""

    def __init__(
        self, address: str, payloads: Sequence[bytes], *, max_channels: int, streams: int, timeout_s: float
    ) -> None:
        self._address = address
        self._payloads = list(payloads)
        self._max_channels = max(1, max_channels)
        self._stream_count = max(1, streams)
        self._timeout_s = timeout_s
        self._channels: list[grpc.aio.Channel] = []
        self._streams: list[_Stream] = []
        self._ids = itertools.count()
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    async def start(self, connections: int = 1, connect_timeout_s: float = 10.0) -> None:
        for i in range(min(max(1, connections), self._max_channels)):
            channel = grpc.aio.insecure_channel(
                self._address,
                options=[
                    ("grpc.channel_id", i),
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.enable_http_proxy", 0),
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                ],
            )
            try:
                await _wait_ready(channel, connect_timeout_s)
            except TimeoutError as exc:
                raise ConnectionError(f"could not connect to {self._address}") from exc
            self._channels.append(channel)
        # A stream's messages are read and written one at a time, so a few streams per channel keep the
        # server's reads and writes going side by side.
        for i in range(max(self._stream_count, len(self._channels))):
            self._streams.append(_Stream(self._channels[i % len(self._channels)]))

    async def send(self, index: int, kind: int = -1) -> str | None:
        # `kind` (a mixed profile's class) never reaches a stream: the config refuses --mix with --streaming.
        # The id goes on the end of the request's bytes as protobuf field 3: the last value of a field wins.
        n = next(self._ids)
        stream = self._streams[n % len(self._streams)]
        request_id = f"{n:x}"
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = fut
        stream.outbox.put_nowait(self._payloads[index] + _id_field(request_id))
        self._inflight += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                return await fut
        except TimeoutError:
            stream.pending.pop(request_id, None)
            return "DEADLINE_EXCEEDED"
        finally:
            self._inflight -= 1

    async def close(self) -> None:
        for stream in self._streams:
            stream.outbox.put_nowait(None)
        for stream in self._streams:
            stream.call.cancel()
            stream.reader.cancel()
        for channel in self._channels:
            await channel.close(grace=None)
