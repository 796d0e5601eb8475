"""The gRPC door's Triton extensions: model configuration, statistics, repository load/unload, shared memory.

Each RPC converts protobuf <-> the data plane's types once; a GatewayError becomes its gRPC status.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway._proto import inference_pb2 as pb
from gateway.core import DataPlane
from gateway.errors import Code, GatewayError
from gateway.types import ModelConfig

T = TypeVar("T")
Abort = Callable[[Any, GatewayError], Awaitable[None]]


def config_message(c: ModelConfig) -> pb.ModelConfig:
    out = pb.ModelConfig(
        name=c.name,
        platform=c.platform,
        backend=c.backend,
        max_batch_size=c.max_batch_size,
        default_model_filename=c.default_model_filename,
    )
    out.version_policy.all.SetInParent()  # the gateway serves every version in its repository
    for t in c.inputs:
        out.input.add(name=t.name, data_type=_data_type(t.datatype), dims=t.shape)
    for t in c.outputs:
        out.output.add(name=t.name, data_type=_data_type(t.datatype), dims=t.shape)
    out.instance_group.add(name=c.name, count=c.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(c.instance_kind))
    if c.dynamic_batching:
        out.dynamic_batching.preferred_batch_size.extend(c.preferred_batch_sizes)
        out.dynamic_batching.max_queue_delay_microseconds = c.max_queue_delay_us
    return out


def _data_type(datatype: str) -> int:
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def statistics_message(stats: list[Any]) -> pb.ModelStatisticsResponse:
    out = pb.ModelStatisticsResponse()
    for s in stats:
        m = out.model_stats.add(
            name=s.model,
            version=s.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        for phase, d in s.phases.items():
            getattr(m.inference_stats, phase).MergeFrom(pb.StatisticDuration(count=d.count, ns=d.ns))
        for size, d in sorted(s.batches.items()):
            b = m.batch_stats.add(batch_size=size)
            b.compute_infer.MergeFrom(pb.StatisticDuration(count=d.count, ns=d.ns))
            b.compute_input.count = b.compute_output.count = d.count
    return out


def local_peer(peer: str) -> bool:
    """A client on this host (loopback or a unix socket): only those can share memory with the gateway."""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:", "ipv6:[::ffff:127."))


class ExtensionServicer:
    def __init__(self, plane: DataPlane, abort: Abort, admin_token: str) -> None:
        self.plane = plane
        self._abort = abort
        self.admin_token = admin_token

    async def _guard(self, context: Any, fn: Callable[[], T | Awaitable[T]]) -> T:
        try:
            result = fn()
            if isinstance(result, Awaitable):
                return await result  # type: ignore[no-any-return]
            return result
        except GatewayError as exc:
            await self._abort(context, exc)
            raise

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return await self._guard(
            context,
            lambda: pb.ModelConfigResponse(
                config=config_message(self.plane.model_config(request.name, request.version or None))
            ),
        )

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        return await self._guard(
            context,
            lambda: statistics_message(self.plane.model_statistics(request.name, request.version or None)),
        )

    def _admin(self, context: Any) -> None:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = (value if isinstance(value, str) else value.decode()).removeprefix("Bearer ").strip()
        if not self.admin_token or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            raise GatewayError(
                Code.UNAUTHENTICATED,
                "loading and unloading models needs the admin token: send 'authorization: Bearer <admin_token>'",
            )

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> Any:
        async def run() -> pb.RepositoryModelLoadResponse:
            self._admin(context)
            await self.plane.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._guard(context, run)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> Any:
        async def run() -> pb.RepositoryModelUnloadResponse:
            self._admin(context)
            await self.plane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._guard(context, run)

    def _local(self, context: Any) -> None:
        if not local_peer(context.peer()):
            raise GatewayError(
                Code.PERMISSION_DENIED, "shared memory is for clients on the gateway's own host; send tensors inline"
            )

    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest, context: Any) -> Any:
        def run() -> pb.SystemSharedMemoryStatusResponse:
            out = pb.SystemSharedMemoryStatusResponse()
            for r in self.plane.shm_status("system", request.name):
                out.regions[r.name].MergeFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(
                        name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                    )
                )
            return out

        return await self._guard(context, run)

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest, context: Any) -> Any:
        def run() -> pb.SystemSharedMemoryRegisterResponse:
            self._local(context)
            self.plane.shm_register_system(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._guard(context, run)

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any) -> Any:
        def run() -> pb.SystemSharedMemoryUnregisterResponse:
            self.plane.shm_unregister("system", request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._guard(context, run)

    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest, context: Any) -> Any:
        def run() -> pb.CudaSharedMemoryStatusResponse:
            out = pb.CudaSharedMemoryStatusResponse()
            for r in self.plane.shm_status("cuda", request.name):
                out.regions[r.name].MergeFrom(
                    pb.CudaSharedMemoryStatusResponse.RegionStatus(
                        name=r.name, device_id=r.device_id, byte_size=r.byte_size
                    )
                )
            return out

        return await self._guard(context, run)

    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest, context: Any) -> Any:
        def run() -> pb.CudaSharedMemoryRegisterResponse:
            self._local(context)
            self.plane.shm_register_cuda(request.name, request.raw_handle, request.device_id, request.byte_size)
            return pb.CudaSharedMemoryRegisterResponse()

        return await self._guard(context, run)

    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any) -> Any:
        def run() -> pb.CudaSharedMemoryUnregisterResponse:
            self.plane.shm_unregister("cuda", request.name)
            return pb.CudaSharedMemoryUnregisterResponse()

        return await self._guard(context, run)


EXTENSION_METHODS: dict[str, tuple[Any, Any]] = {
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
    "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, pb.SystemSharedMemoryStatusResponse),
    "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest, pb.SystemSharedMemoryRegisterResponse),
    "SystemSharedMemoryUnregister": (
        pb.SystemSharedMemoryUnregisterRequest,
        pb.SystemSharedMemoryUnregisterResponse,
    ),
    "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest, pb.CudaSharedMemoryStatusResponse),
    "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest, pb.CudaSharedMemoryRegisterResponse),
    "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest, pb.CudaSharedMemoryUnregisterResponse),
}
