"""gRPC sender: pre-serialized ``ModelInfer`` bytes over a few ``grpc.aio`` channels.

Responses stay raw bytes; one in ``parse_every`` is parsed to prove the server speaks the
protocol. Errors are reported by gRPC status name (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# One HTTP/2 connection multiplexes streams but serializes their frames on one socket and one
# server-side transport; spreading in-flight requests over channels avoids measuring that queue.
STREAMS_PER_CHANNEL = 64


def _identity(data: bytes) -> bytes:
    return data


class GrpcSender:
    """Sends pool payloads by index; ``send`` returns None on success or an error code name."""

    def __init__(
        self,
        address: str,
        payloads: Sequence[bytes],
        *,
        max_channels: int,
        timeout_s: float,
        parse_every: int = 64,
        class_calls: Sequence[tuple[tuple[tuple[str, str], ...], float]] = (),
    ) -> None:
        self._address = address
        self._payloads = list(payloads)
        self._max_channels = max(1, max_channels)
        self._timeout_s = timeout_s
        self._class_calls = list(class_calls)  # per class of a mixed profile: (metadata, deadline in seconds)
        self._parse_every = parse_every
        self._channels: list[grpc.aio.Channel] = []
        self._methods: list[Any] = []
        self._inflight = 0
        self._responses = 0
        self._turn = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    def _add_channel(self) -> None:
        # A distinct channel arg stops gRPC core from sharing one subchannel (one TCP
        # connection) between channels that have identical arguments.
        options = [
            ("grpc.channel_id", len(self._channels)),
            ("grpc.use_local_subchannel_pool", 1),
            # Only the target is contacted (no proxy from the environment), and a
            # failed call is an error to count, not something to retry quietly.
            ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        channel = grpc.aio.insecure_channel(self._address, options=options)
        self._channels.append(channel)
        self._methods.append(
            channel.unary_unary(INFER_METHOD, request_serializer=_identity, response_deserializer=_identity)
        )

    async def start(self, channels: int = 1, connect_timeout_s: float = 10.0) -> None:
        """Open ``channels`` channels now (more are added lazily as in-flight grows)."""
        for _ in range(min(max(1, channels), self._max_channels)):
            self._add_channel()
        for channel in self._channels:
            try:
                await _wait_ready(channel, connect_timeout_s)
            except TimeoutError as exc:
                raise ConnectionError(f"could not connect to {self._address}") from exc

    async def send(self, index: int, kind: int = -1) -> str | None:
        methods = self._methods
        if self._inflight >= len(methods) * STREAMS_PER_CHANNEL and len(methods) < self._max_channels:
            self._add_channel()
        # Round-robin, not "fill channel 0 first": in a closed loop every send happens at
        # the same in-flight count and would always pick the same channel.
        self._turn += 1
        method = methods[self._turn % len(methods)]
        self._inflight += 1
        try:
            if kind < 0:
                reply = await method(self._payloads[index], timeout=self._timeout_s)
            else:
                metadata, timeout_s = self._class_calls[kind]
                reply = await method(self._payloads[index], timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        finally:
            self._inflight -= 1
        self._responses += 1
        if self._responses % self._parse_every == 0:
            return _check_reply(reply)
        return None

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)


async def _wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        await channel.channel_ready()


def _check_reply(reply: bytes) -> str | None:
    try:
        service_pb2.ModelInferResponse.FromString(reply)
    except DecodeError:
        return "BAD_RESPONSE"
    return None
