"""The gRPC door: `inference.GRPCInferenceService` on grpc.aio, plus grpc.health.v1 and reflection.

Converts protobuf <-> gateway types once, calls the data plane once, and maps a GatewayError
to its gRPC status at this boundary.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway import codec
from gateway._proto import POOL
from gateway._proto import inference_pb2 as pb
from gateway._proto import inference_pb2_grpc as pb_grpc
from gateway.core import DataPlane
from gateway.doors.grpc_extensions import EXTENSION_METHODS, ExtensionServicer
from gateway.errors import GatewayError, invalid
from gateway.telemetry.tracing import parse_traceparent
from gateway.types import InferRequest, InferResponse, RequestedOutput, Tensor

SERVICE = "inference.GRPCInferenceService"
T = TypeVar("T")


def decode_parameters(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


_FIELD_DTYPES = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def decode_tensor(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, max_elements: int) -> Tensor:
    shape = tuple(t.shape)
    if raw is not None:
        return Tensor(t.name, t.datatype, codec.from_raw(t.name, t.datatype, shape, raw, max_elements))
    field = codec.CONTENTS_FIELD.get(t.datatype)
    if field is None:
        codec.numpy_dtype(t.name, t.datatype)  # raises for unknown datatypes
        raise invalid(f"input '{t.name}': {t.datatype} has no typed contents field; send it in raw_input_contents")
    count = codec.element_count(t.name, shape, max_elements)
    values = getattr(t.contents, field)
    if len(values) != count:
        raise invalid(
            f"input '{t.name}': shape {list(shape)} needs {count} values, contents.{field} holds {len(values)}"
        )
    if t.datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
    else:
        dtype = codec.NUMPY_DTYPES[t.datatype]
        wide: np.ndarray = np.array(values, dtype=_FIELD_DTYPES[field])  # the contents field's own width
        if dtype.kind in "iu" and wide.size:
            info = np.iinfo(dtype)
            if wide.min() < info.min or wide.max() > info.max:
                raise invalid(
                    f"input '{t.name}': contents.{field} holds values outside {t.datatype}'s range "
                    f"{info.min}..{info.max}"
                )
        arr = wide.astype(dtype)
    return Tensor(t.name, t.datatype, arr.reshape(shape))


ShmRead = Callable[[str, str, int, int], bytes]
ShmWrite = Callable[[str, str, int, int, bytes], None]


def shm_target(name: str, params: Any) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when a tensor lives in shared memory (tritonclient's set_shared_memory)."""
    if "shared_memory_region" not in params:
        return None
    if "shared_memory_byte_size" not in params:
        raise invalid(f"tensor '{name}': shared_memory_region needs shared_memory_byte_size")
    offset = params["shared_memory_offset"].int64_param if "shared_memory_offset" in params else 0
    return params["shared_memory_region"].string_param, offset, params["shared_memory_byte_size"].int64_param


def _decode_with_shm(req: pb.ModelInferRequest, max_elements: int, read_shm: ShmRead) -> tuple[Tensor, ...]:
    targets = [shm_target(t.name, t.parameters) if t.parameters else None for t in req.inputs]
    raw = req.raw_input_contents
    carried = len(req.inputs) - sum(1 for t in targets if t is not None)
    if raw and len(raw) != carried:
        raise invalid(
            f"raw_input_contents holds {len(raw)} entries for {carried} inputs not in shared memory; send one "
            "entry per such input, in order, or none"
        )
    inputs = []
    j = 0
    for t, target in zip(req.inputs, targets, strict=True):
        if target is not None:
            data = read_shm(t.name, *target)
            inputs.append(
                Tensor(t.name, t.datatype, codec.from_raw(t.name, t.datatype, tuple(t.shape), data, max_elements))
            )
        elif raw:
            inputs.append(decode_tensor(t, raw[j], max_elements))
            j += 1
        else:
            inputs.append(decode_tensor(t, None, max_elements))
    return tuple(inputs)


def decode_request(
    req: pb.ModelInferRequest,
    max_elements: int,
    *,
    read_shm: ShmRead | None = None,
    received_at: float,
    deadline: float | None,
    routing_key: str | None,
    client: str = "",
    traceparent: str = "",
    tracestate: str = "",
    api_key: str = "",
    priority: str = "",
) -> InferRequest:
    raw = req.raw_input_contents
    if read_shm is not None and any("shared_memory_region" in t.parameters for t in req.inputs if t.parameters):
        inputs = _decode_with_shm(req, max_elements, read_shm)
    elif raw and len(raw) != len(req.inputs):
        raise invalid(
            f"raw_input_contents holds {len(raw)} entries for {len(req.inputs)} inputs; "
            "send one entry per input, in order, or none"
        )
    elif raw:
        inputs = tuple([decode_tensor(t, raw[i], max_elements) for i, t in enumerate(req.inputs)])
    else:
        inputs = tuple([decode_tensor(t, None, max_elements) for t in req.inputs])
    outputs = (
        tuple(
            [
                RequestedOutput(o.name, shm=shm_target(o.name, o.parameters) if o.parameters else None)
                for o in req.outputs
            ]
        )
        if req.outputs
        else ()
    )
    return InferRequest(
        model=req.model_name,
        version=req.model_version or None,
        id=req.id,
        inputs=inputs,
        outputs=outputs,
        parameters=decode_parameters(req.parameters) if req.parameters else {},
        routing_key=routing_key,
        deadline=deadline,
        received_at=received_at,
        client=client,
        protocol="grpc",
        traceparent=traceparent,
        tracestate=tracestate,
        api_key=api_key,
        priority=priority,
    )


def encode_response(
    resp: InferResponse, requested: tuple[RequestedOutput, ...] = (), write_shm: ShmWrite | None = None
) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id)
    shm = {o.name: o.shm for o in requested if o.shm is not None} if write_shm is not None else None
    if not shm:
        for t in resp.outputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
            out.raw_output_contents.append(codec.to_raw(t.data, t.datatype))
        return out
    assert write_shm is not None
    # Outputs in shared memory go last and carry no raw contents, so raw_output_contents[i] stays outputs[i].
    for t in sorted(resp.outputs, key=lambda t: t.name in shm):
        tensor = out.outputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
        data = codec.to_raw(t.data, t.datatype)
        target = shm.get(t.name)
        if target is None:
            out.raw_output_contents.append(data)
            continue
        region, offset, size = target
        write_shm(t.name, region, offset, size, data)
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_offset"].int64_param = offset
        tensor.parameters["shared_memory_byte_size"].int64_param = len(data)
    return out


@dataclass(frozen=True, slots=True)
class CallMetadata:
    routing_key: str | None
    traceparent: str
    tracestate: str
    api_key: str
    priority: str


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        plane: DataPlane,
        max_elements: int,
        default_timeout_s: float,
        routing_header: str = "x-routing-key",
        max_rows: int = 65536,
        key_header: str = "x-api-key",
        priority_header: str = "x-priority",
    ) -> None:
        self.plane = plane
        self.key_header = key_header.lower()  # gRPC metadata keys are lower case
        self.priority_header = priority_header.lower()
        self.max_elements = max_elements
        self.max_rows = max_rows
        self.default_timeout_s = default_timeout_s
        self.routing_header = routing_header

    async def _guard(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except GatewayError as exc:
            await self._abort(context, exc)
            raise

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: GatewayError) -> None:
        """Ends the RPC with the error table's gRPC code (abort raises; callers re-raise for the type checker)."""
        trailing: tuple[tuple[str, str], ...] = ()
        if exc.retry_after_s is not None:
            trailing = (("grpc-retry-pushback-ms", str(int(exc.retry_after_s * 1000))),)
        if exc.traceparent:
            trailing = (*trailing, ("traceparent", exc.traceparent))
        if trailing:
            context.set_trailing_metadata(trailing)
        await context.abort(grpc.StatusCode[exc.code.name], exc.message)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.server_live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        name, version, extensions = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def run() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

        return await self._guard(context, run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def run() -> pb.ModelMetadataResponse:
            md = self.plane.model_metadata(request.name, request.version or None)
            tm = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=md.name,
                versions=md.versions,
                platform=md.platform,
                inputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape) for t in md.inputs],
                outputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape) for t in md.outputs],
            )

        return await self._guard(context, run)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        idx = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                idx(name=s.model, version=s.version, state=s.state, reason=s.reason)
                for s in self.plane.repository_index(request.ready)
            ]
        )

    def call_metadata(self, context: Any) -> CallMetadata:
        """The routing, tracing and tenant keys a call's metadata carries (a stream's apply to all its messages)."""
        routing_key = None
        traceparent = tracestate = api_key = priority = ""
        for key, value in context.invocation_metadata() or ():
            if key == self.routing_header:
                routing_key = value if isinstance(value, str) else value.decode()
            elif key == self.key_header:
                api_key = value if isinstance(value, str) else value.decode()
            elif key == self.priority_header:
                priority = value if isinstance(value, str) else value.decode()
            elif key == "traceparent":
                traceparent = parse_traceparent(value if isinstance(value, str) else value.decode())
            elif key == "tracestate":
                tracestate = value if isinstance(value, str) else value.decode()
        return CallMetadata(routing_key, traceparent, tracestate, api_key, priority)

    async def answer(
        self, request: pb.ModelInferRequest, meta: CallMetadata, received: float, deadline: float, client: str
    ) -> tuple[InferResponse, pb.ModelInferResponse]:
        """One ModelInferRequest through the data plane, unary or streamed alike; GatewayError for a fault."""
        plane = self.plane
        plane.check_rows(
            request.model_name,
            request.model_version or None,
            ((t.name, t.shape) for t in request.inputs),
            self.max_rows,
        )
        req = decode_request(
            request,
            self.max_elements,
            read_shm=plane.shm_read,
            received_at=received,
            deadline=deadline,
            routing_key=meta.routing_key,
            client=client,
            traceparent=meta.traceparent,
            tracestate=meta.tracestate,
            api_key=meta.api_key,
            priority=meta.priority,
        )
        if req.outputs:
            plane.shm_check_outputs(req.outputs)
        resp = await plane.infer(req)
        return resp, encode_response(resp, req.outputs, plane.shm_write)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # The hot path: no closure or _guard indirection per call.
        received = time.monotonic()
        try:
            remaining = context.time_remaining()
            deadline = received + (remaining if remaining is not None else self.default_timeout_s)
            resp, reply = await self.answer(request, self.call_metadata(context), received, deadline, context.peer())
            if resp.traceparent:  # only when tracing is on
                context.set_trailing_metadata((("traceparent", resp.traceparent),))
            return reply
        except GatewayError as exc:
            await self._abort(context, exc)
            raise


# Each RPC: (request class, response class). Requests arrive as bytes and are parsed here, so an
# undecodable message is answered INVALID_ARGUMENT instead of grpc's generic INTERNAL.
_METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}


def _raw_handler(method: Callable[[Any, Any], Awaitable[Any]], request_cls: Any, response_cls: Any) -> Any:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = request_cls.FromString(raw)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {request_cls.DESCRIPTOR.full_name} message"
            )
        return await method(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=response_cls.SerializeToString
    )


class _Unserved(grpc.GenericRpcHandler):
    """The rest of Triton's service (trace and log settings): a clear UNIMPLEMENTED instead of gRPC's bare one."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)  # type: ignore[attr-defined]
        if not method.startswith(f"/{SERVICE}/"):
            return None
        name = method.rsplit("/", 1)[-1]

        async def refuse(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{SERVICE}/{name} is not served by this gateway (see README, 'Doors' for what is)",
            )
            raise AssertionError("abort raises")

        return grpc.unary_unary_rpc_method_handler(refuse)


StreamHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class GrpcDoor:
    """Owns the grpc.aio server: inference (unary, streaming and Triton's extensions), health and reflection."""

    def __init__(
        self,
        servicer: InferenceServicer,
        max_message_bytes: int,
        max_metadata_bytes: int = 16 * 1024,
        credentials: grpc.ServerCredentials | None = None,
        *,
        stream: StreamHandler | None = None,
        extensions: ExtensionServicer | None = None,
    ) -> None:
        self.servicer = servicer
        self.credentials = credentials  # None: plaintext
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Metadata past the limit is refused by the transport before the call reaches a handler.
                ("grpc.max_metadata_size", max_metadata_bytes),
                ("grpc.absolute_max_metadata_size", max_metadata_bytes),
                ("grpc.so_reuseport", 1),
            ]
        )
        handlers = {name: _raw_handler(getattr(servicer, name), req, resp) for name, (req, resp) in _METHODS.items()}
        if extensions is not None:
            for name, (req, resp) in EXTENSION_METHODS.items():
                handlers[name] = _raw_handler(getattr(extensions, name), req, resp)
        if stream is not None:
            # Raw bytes both ways: the handler parses each request itself (garbage gets an error on the stream).
            handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers), _Unserved()))
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
            pool=_reflection_pool(),
        )

    def bind(self, host: str, port: int) -> int:
        address = f"{host}:{port}"
        bound: int = (
            self.server.add_insecure_port(address)
            if self.credentials is None
            else self.server.add_secure_port(address, self.credentials)
        )
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {host}:{port}; is the port in use?")
        return bound

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def _reflection_pool() -> Any:
    """Our generated code lives in a private pool; reflection also needs the health and reflection files there."""
    for fd in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        try:
            POOL.FindFileByName(fd.name)
        except KeyError:
            POOL.AddSerializedFile(fd.serialized_pb)
    return POOL
