"""`ModelStreamInfer` on the gRPC door: many requests on one call, each through the data plane like a unary one.

Answers go back as they finish, with their request's id; failures are an `error_message` and the stream stays up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway._proto import inference_pb2 as pb
from gateway.doors.grpc import CallMetadata, InferenceServicer
from gateway.errors import GatewayError

log = logging.getLogger(__name__)
_INFER_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def wrap_response(inner: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: inner}, framed by hand: no copy of the inner message."""
    return _INFER_RESPONSE_TAG + _varint(len(inner)) + inner


def error_response(message: str, model: str = "", version: str = "", request_id: str = "") -> bytes:
    reply = pb.ModelStreamInferResponse(error_message=message)
    reply.infer_response.model_name, reply.infer_response.model_version = model, version
    reply.infer_response.id = request_id
    return reply.SerializeToString()


@dataclass(frozen=True, slots=True)
class _Call:
    """What every request of one stream shares: the call's metadata, read once, its peer and its deadline."""

    meta: CallMetadata
    client: str
    deadline: float | None  # the stream's own deadline, if the client set one


class StreamInfer:
    """At most `max_inflight` requests of a stream are in the gateway (read, not yet answered on the wire); past
    that the stream stops reading until answers are written, so a client that never reads holds bounded memory.
    Each request is answered by the unary door's own path (InferenceServicer.answer)."""

    def __init__(self, servicer: InferenceServicer, max_inflight: int) -> None:
        self.servicer = servicer
        self.max_inflight = max_inflight

    def _call(self, context: grpc.aio.ServicerContext[Any, Any]) -> _Call:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return _Call(self.servicer.call_metadata(context), context.peer(), deadline)

    async def handle(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        call = self._call(context)
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_inflight)
        working: set[asyncio.Task[None]] = set()

        async def answer(raw: bytes) -> None:
            try:
                answers.put_nowait(await self.one(raw, call))
            finally:
                working.discard(asyncio.current_task())  # type: ignore[arg-type]  # always inside its task

        async def read() -> None:
            try:
                async for raw in requests:
                    await slots.acquire()  # released once its answer is on the wire
                    working.add(asyncio.create_task(answer(raw)))
            finally:
                # The client finished sending (or went away): answer what is in flight, then end the call.
                if working:
                    await asyncio.gather(*list(working), return_exceptions=True)
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                await context.write(reply)
                slots.release()
        finally:
            # A client cancel lands here: its queued work goes too (a batcher drops cancelled requests).
            reader.cancel()
            for task in list(working):
                task.cancel()

    async def one(self, raw: bytes, call: _Call) -> bytes:
        """One streamed request's answer, serialized; failures become an error_message, never an exception."""
        received = time.monotonic()
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError:
            return error_response("request is not a valid inference.ModelInferRequest message")
        try:
            deadline = received + self.servicer.default_timeout_s
            if call.deadline is not None:
                deadline = min(deadline, call.deadline)
            _, reply = await self.servicer.answer(request, call.meta, received, deadline, call.client)
            return wrap_response(reply.SerializeToString())
        except GatewayError as exc:
            return error_response(
                f"[{exc.code.name}] {exc.message}", request.model_name, request.model_version, request.id
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("streamed request %r failed", request.id)
            return error_response(
                "internal error in the gateway", request.model_name, request.model_version, request.id
            )
