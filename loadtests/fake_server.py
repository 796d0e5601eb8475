"""A do-nothing Open Inference Protocol server (gRPC + HTTP) for tests and calibration.

Run it next to the generator (``python -m loadtests.fake_server``) to learn the generator's own
ceiling on a machine; tests use its knobs to inject latency, a stall and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2

_SERVICE = "/inference.GRPCInferenceService/"
_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer)?$")


@dataclass
class Behaviour:
    """Fault knobs; request counts are over infer calls on both protocols together."""

    delay_s: float = 0.0  # added to every infer (without blocking other requests)
    stall_s: float = 0.0  # block the whole server (event loop) this long, once ...
    stall_after: int = 0  # ... when this infer request arrives (0: never)
    error_every: int = 0  # every N-th infer fails: gRPC UNAVAILABLE, HTTP 503
    validate: bool = False  # parse each request and reject malformed ones (costs CPU)
    class_delay_s: dict[str, float] = field(default_factory=dict)  # added by the request's x-priority class
    inputs: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])


class FakeServer:
    """Serves model ``model`` on both protocols from one event loop."""

    def __init__(self, behaviour: Behaviour | None = None, model: str = "m") -> None:
        self.behaviour = behaviour or Behaviour()
        self.model = model
        self.infer_count = 0
        self.invalid = 0
        self.seen: dict[tuple[str, str, str], int] = {}  # (x-priority, x-api-key, x-timeout-ms) -> infer calls
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: asyncio.Server | None = None
        self.metadata: dict[str, Any] = {
            "name": model,
            "versions": ["1"],
            "platform": "fake",
            "inputs": self.behaviour.inputs,
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        }
        reply = service_pb2.ModelInferResponse(model_name=model, model_version="1")
        reply.outputs.add(name="y", datatype="FP32", shape=[1, 1])
        reply.raw_output_contents.append(b"\0\0\0\0")
        self._infer_reply: bytes = reply.SerializeToString()

    async def start(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0) -> None:
        self._grpc = grpc.aio.server()
        self._grpc.add_generic_rpc_handlers((_GrpcHandler(self),))
        self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
        await self._grpc.start()
        loop = asyncio.get_running_loop()
        self._http = await loop.create_server(lambda: _HttpProtocol(self), host, http_port)
        self.http_port = self._http.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.close()

    async def admit(self, priority: str = "", api_key: str = "", timeout_ms: str = "") -> str | None:
        """Apply the behaviour to one infer call; returns 'error' when it must fail."""
        self.infer_count += 1
        key = (priority, api_key, timeout_ms)
        self.seen[key] = self.seen.get(key, 0) + 1
        count = self.infer_count
        b = self.behaviour
        if b.stall_after and count == b.stall_after:
            # Deliberately blocking: a stop-the-world pause (GC, swap) stops reads and writes.
            time.sleep(b.stall_s)
        if b.delay_s or priority in b.class_delay_s:
            await asyncio.sleep(b.delay_s + b.class_delay_s.get(priority, 0.0))
        if b.error_every and count % b.error_every == 0:
            return "error"
        return None

    def valid_grpc(self, data: bytes) -> bool:
        request = service_pb2.ModelInferRequest.FromString(data)
        names = {t["name"] for t in self.behaviour.inputs}
        return (
            request.model_name == self.model
            and {t.name for t in request.inputs} == names
            and len(request.raw_input_contents) == len(request.inputs)
        )

    def valid_http(self, body: bytes, json_length: int | None) -> bool:
        doc = json.loads(body[:json_length] if json_length is not None else body)
        names = {t["name"] for t in self.behaviour.inputs}
        sizes = [t.get("parameters", {}).get("binary_data_size", 0) for t in doc["inputs"]]
        binary_ok = json_length is None or json_length + sum(sizes) == len(body)
        return {t["name"] for t in doc["inputs"]} == names and binary_ok


class _GrpcHandler(grpc.GenericRpcHandler):
    def __init__(self, server: FakeServer) -> None:
        self._server = server

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)  # type: ignore[attr-defined]
        if method == _SERVICE + "ModelInfer":
            return grpc.unary_unary_rpc_method_handler(self._infer)
        if method == _SERVICE + "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if method == _SERVICE + "ModelMetadata":
            return grpc.unary_unary_rpc_method_handler(
                self._metadata,
                request_deserializer=service_pb2.ModelMetadataRequest.FromString,
                response_serializer=service_pb2.ModelMetadataResponse.SerializeToString,
            )
        return None

    async def _infer(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        server = self._server
        meta = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if await server.admit(meta.get("x-priority", ""), meta.get("x-api-key", "")) == "error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake overload")
        if server.behaviour.validate and not server.valid_grpc(request):
            server.invalid += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        return server._infer_reply

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The streaming echo: the constant reply with each request's id, errors as error_message."""
        server = self._server
        async for raw in requests:
            request_id = service_pb2.ModelInferRequest.FromString(raw).id
            if await server.admit() == "error":
                reply = service_pb2.ModelStreamInferResponse(error_message="[UNAVAILABLE] fake overload")
                reply.infer_response.id = request_id
                await context.write(reply.SerializeToString())
                continue
            if server.behaviour.validate and not server.valid_grpc(raw):
                server.invalid += 1
            inner = server._infer_reply + b"\x1a" + _varint(len(request_id)) + request_id.encode()
            await context.write(b"\x12" + _varint(len(inner)) + inner)

    async def _metadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.name != self._server.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name}")
        meta = self._server.metadata
        reply = service_pb2.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for spec in meta["inputs"]:
            reply.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for spec in meta["outputs"]:
            reply.outputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        return reply


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; requests on one socket are answered in order."""

    def __init__(self, server: FakeServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._queue: asyncio.Queue[tuple[str, str, dict[bytes, bytes], bytes]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            method, path = lines[0].decode("latin-1").split(" ")[:2]
            self._queue.put_nowait((method, path, headers, body))

    async def _serve(self) -> None:
        while True:
            method, path, headers, body = await self._queue.get()
            status, extra, payload = await self._handle(method, path, headers, body)
            head = (
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n{extra}\r\n"
            )
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(head.encode("latin-1") + payload)

    async def _handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> tuple[int, str, bytes]:
        server = self._server
        match = _PATH.match(path)
        if match is None or match.group(1) != server.model:
            return 404, "", b'{"error":"not found"}'
        if not match.group(3):
            return 200, "", json.dumps(server.metadata).encode()
        if method != "POST":
            return 405, "", b'{"error":"method not allowed"}'
        named = [headers.get(h, b"").decode("latin-1") for h in (b"x-priority", b"x-api-key", b"x-timeout-ms")]
        if await server.admit(*named) == "error":
            return 503, "", b'{"error":"fake overload"}'
        raw_length = headers.get(b"inference-header-content-length")
        json_length = int(raw_length) if raw_length is not None else None
        if server.behaviour.validate and not server.valid_http(body, json_length):
            server.invalid += 1
            return 400, "", b'{"error":"malformed request"}'
        if json_length is None:
            return (
                200,
                "",
                (
                    b'{"model_name":"%s","outputs":[{"name":"y","datatype":"FP32",'
                    b'"shape":[1,1],"data":[0.0]}]}' % server.model.encode()
                ),
            )
        header = json.dumps(
            {
                "model_name": server.model,
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1], "parameters": {"binary_data_size": 4}}],
            }
        ).encode()
        return 200, f"Inference-Header-Content-Length: {len(header)}\r\n", header + b"\0" * 4


@contextmanager
def serve_in_thread(behaviour: Behaviour | None = None, model: str = "m") -> Iterator[FakeServer]:
    """A FakeServer on 127.0.0.1 ephemeral ports, on its own event loop in a daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-oip-server", daemon=True)
    thread.start()
    server = FakeServer(behaviour, model)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=9001)
    parser.add_argument("--http-port", type=int, default=9000)
    parser.add_argument("--model", default="m")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every infer")
    parser.add_argument(
        "--stall-ms", type=float, default=0.0, help="freeze the whole server this long, once (see --stall-after)"
    )
    parser.add_argument(
        "--stall-after", type=int, default=0, metavar="N", help="freeze when the N-th infer request arrives"
    )
    parser.add_argument(
        "--error-every", type=int, default=0, metavar="N", help="fail every N-th infer (gRPC UNAVAILABLE, HTTP 503)"
    )
    args = parser.parse_args()
    behaviour = Behaviour(
        delay_s=args.delay_ms / 1000.0,
        stall_s=args.stall_ms / 1000.0,
        stall_after=args.stall_after,
        error_every=args.error_every,
    )

    async def serve() -> None:
        server = FakeServer(behaviour, args.model)
        await server.start(args.host, args.grpc_port, args.http_port)
        print(
            f"fake OIP server: model {args.model!r} on grpc://{args.host}:{server.grpc_port}"
            f" and http://{args.host}:{server.http_port}",
            flush=True,
        )
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
