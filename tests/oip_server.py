"""A small Open Inference Protocol server for the tests: ONNX models run by ONNX Runtime, over gRPC and HTTP.

It stands in for a remote Triton, KServe or MLServer that a `remote` model version forwards to:

    python -m tests.oip_server --model breast_cancer=model.onnx --grpc-port 0 --http-port 0 --ready-file r.json

gRPC speaks `inference.GRPCInferenceService` with the stubs in gateway/_proto (raw and typed tensors);
HTTP speaks the JSON protocol with the binary tensor data extension. Like Triton, it answers a request
ONNX Runtime rejects (wrong shape or type, unknown input) with INVALID_ARGUMENT / 400, an unknown model
with NOT_FOUND / 404 and any other failure with INTERNAL / 500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import onnxruntime as ort
import uvicorn

from gateway._proto import inference_pb2 as pb
from gateway._proto import inference_pb2_grpc as pb_grpc

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(float16)": "FP16",
}
TYPED_FIELDS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
}
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "INTERNAL": 500}
_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer|/ready)?$")


class OipError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DTYPES.items():
        if array.dtype == dtype:
            return name
    raise OipError("INTERNAL", f"cannot send dtype {array.dtype}")


@dataclass
class Model:
    name: str
    session: ort.InferenceSession

    def metadata(self) -> dict[str, Any]:
        def specs(items: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": i.name,
                    "datatype": ORT_TYPES.get(i.type, i.type),
                    "shape": [d if isinstance(d, int) else -1 for d in i.shape],
                }
                for i in items
            ]

        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": specs(self.session.get_inputs()),
            "outputs": specs(self.session.get_outputs()),
        }


class Models:
    def __init__(self, paths: dict[str, Path], delay_s: float = 0.0) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.models = {
            name: Model(name, ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]))
            for name, p in paths.items()
        }
        self.delay_s = delay_s
        self.infer_count = 0

    def get(self, name: str, version: str) -> Model:
        model = self.models.get(name)
        if model is None or version not in ("", "1"):
            raise OipError("NOT_FOUND", f"model '{name}' version '{version or 'default'}' is not served here")
        return model

    async def infer(
        self, name: str, version: str, inputs: dict[str, np.ndarray], wanted: list[str]
    ) -> dict[str, np.ndarray]:
        model = self.get(name, version)
        self.infer_count += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        declared = {i.name for i in model.session.get_inputs()}
        if set(inputs) != declared:
            raise OipError("INVALID_ARGUMENT", f"expected inputs {sorted(declared)}, got {sorted(inputs)}")
        names = wanted or [o.name for o in model.session.get_outputs()]
        try:
            results = model.session.run(names, inputs)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types are not importable by name
            code = "INVALID_ARGUMENT" if type(exc).__name__ in ("InvalidArgument", "InvalidGraph") else "INTERNAL"
            raise OipError(code, str(exc).splitlines()[0]) from None
        return dict(zip(names, results, strict=True))


# --- gRPC --------------------------------------------------------------------------------------------------


class GrpcService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: Models) -> None:
        self.models = models

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name in self.models.models)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            meta = self.models.get(request.name, request.version).metadata()
        except OipError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        reply = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for spec in meta["inputs"]:
            reply.inputs.add(**spec)
        for spec in meta["outputs"]:
            reply.outputs.add(**spec)
        return reply

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            inputs = {}
            for i, t in enumerate(request.inputs):
                dtype = DTYPES.get(t.datatype)
                if dtype is None:
                    raise OipError("INVALID_ARGUMENT", f"input '{t.name}': unsupported datatype {t.datatype}")
                if request.raw_input_contents:
                    flat = np.frombuffer(request.raw_input_contents[i], dtype=dtype)
                else:
                    flat = np.array(getattr(t.contents, TYPED_FIELDS[t.datatype]), dtype=dtype)
                if flat.size != int(np.prod(t.shape)):
                    raise OipError(
                        "INVALID_ARGUMENT", f"input '{t.name}': {flat.size} values for shape {list(t.shape)}"
                    )
                inputs[t.name] = flat.reshape(tuple(t.shape))
            out = await self.models.infer(
                request.model_name, request.model_version, inputs, [o.name for o in request.outputs]
            )
        except OipError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        reply = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for name, array in out.items():
            reply.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            reply.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return reply


# --- HTTP --------------------------------------------------------------------------------------------------


class HttpApp:
    """The HTTP/REST protocol as a bare ASGI app: JSON tensors and the binary tensor data extension."""

    def __init__(self, models: Models) -> None:
        self.models = models

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            status, extra, payload = await self.handle(scope["method"], scope["path"], headers, body)
        except OipError as exc:
            status, extra, payload = HTTP_STATUS.get(exc.code, 500), [], json.dumps({"error": exc.message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if path in ("/v2/health/live", "/v2/health/ready"):
            return 200, [], b"{}"
        match = _PATH.match(path)
        if match is None:
            raise OipError("NOT_FOUND", f"no route {path}")
        name, version, action = match.group(1), match.group(2) or "", match.group(3)
        model = self.models.get(name, version)
        if action is None:
            return 200, [], json.dumps(model.metadata()).encode()
        if action == "/ready":
            return 200, [], b"{}"
        if method != "POST":
            raise OipError("INVALID_ARGUMENT", "infer takes POST")
        head_length = int(headers.get("inference-header-content-length", len(body)))
        try:
            doc = json.loads(body[:head_length])
        except ValueError as exc:
            raise OipError("INVALID_ARGUMENT", f"undecodable request: {exc}") from None
        inputs, offset = {}, head_length
        for t in doc.get("inputs", []):
            dtype = DTYPES.get(t["datatype"])
            if dtype is None:
                raise OipError("INVALID_ARGUMENT", f"input '{t['name']}': unsupported datatype {t['datatype']}")
            size = t.get("parameters", {}).get("binary_data_size")
            if size is not None:
                flat = np.frombuffer(body[offset : offset + size], dtype=dtype)
                offset += size
            else:
                flat = np.asarray(t["data"], dtype=dtype).ravel()
            if flat.size != int(np.prod(t["shape"])):
                raise OipError("INVALID_ARGUMENT", f"input '{t['name']}': {flat.size} values for shape {t['shape']}")
            inputs[t["name"]] = flat.reshape(t["shape"])
        requested = doc.get("outputs", [])
        binary = {o["name"] for o in requested if o.get("parameters", {}).get("binary_data")}
        out = await self.models.infer(name, version, inputs, [o["name"] for o in requested])
        outputs, blobs = [], []
        for out_name, array in out.items():
            spec: dict[str, Any] = {"name": out_name, "datatype": datatype_of(array), "shape": list(array.shape)}
            if out_name in binary:
                blob = np.ascontiguousarray(array).tobytes()
                spec["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                spec["data"] = array.ravel().tolist()
            outputs.append(spec)
        header = json.dumps(
            {"model_name": name, "model_version": "1", "id": doc.get("id", ""), "outputs": outputs}
        ).encode()
        if not blobs:
            return 200, [], header
        return 200, [(b"inference-header-content-length", str(len(header)).encode())], header + b"".join(blobs)


# --- process -----------------------------------------------------------------------------------------------


class OipServer:
    def __init__(self, models: Models) -> None:
        self.models = models
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0) -> None:
        self._grpc = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcService(self.models), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
        await self._grpc.start()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Without it a small response waits for the client's delayed ACK: about 40 ms per call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, http_port))
        self.http_port = sock.getsockname()[1]
        self._http = uvicorn.Server(
            uvicorn.Config(HttpApp(self.models), lifespan="off", log_level="warning", access_log=False)
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task


@contextmanager
def serve_in_thread(paths: dict[str, Path], delay_s: float = 0.0) -> Iterator[OipServer]:
    """An OipServer on 127.0.0.1 ephemeral ports, on its own event loop in a daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="oip-server", daemon=True)
    thread.start()
    server = OipServer(Models(paths, delay_s))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="serve the ONNX file PATH as model NAME (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every infer")
    parser.add_argument("--ready-file", type=Path, help="write the bound ports here as JSON once serving")
    args = parser.parse_args()
    paths = dict(item.split("=", 1) for item in args.model)

    async def serve() -> None:
        server = OipServer(Models({k: Path(v) for k, v in paths.items()}, args.delay_ms / 1000.0))
        await server.start(args.host, args.grpc_port, args.http_port)
        if args.ready_file is not None:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"grpc_port": server.grpc_port, "http_port": server.http_port}))
            tmp.replace(args.ready_file)
        print(f"OIP server on grpc {args.host}:{server.grpc_port} and http {args.host}:{server.http_port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
