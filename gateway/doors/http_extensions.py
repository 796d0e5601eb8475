"""The HTTP door's Triton extensions: model configuration, statistics, repository load/unload, shared memory.

JSON in Triton's shapes (what tritonclient.http returns to its caller); the HTTP door routes here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.core import DataPlane
from gateway.doors.http_schema import parse_json
from gateway.errors import Code, GatewayError, invalid
from gateway.types import ModelConfig, RequestedOutput


class SystemRegisterBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str
    offset: int = Field(0, ge=0)
    byte_size: int = Field(ge=1)


class CudaHandle(BaseModel):
    b64: str


class CudaRegisterBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    raw_handle: CudaHandle
    device_id: int = Field(0, ge=0)
    byte_size: int = Field(ge=1)


def config_json(c: ModelConfig) -> dict[str, Any]:
    def tensor(t: Any) -> dict[str, Any]:
        dtype = "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}"
        return {"name": t.name, "data_type": dtype, "dims": list(t.shape)}

    out: dict[str, Any] = {
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": {"all": {}},
        "max_batch_size": c.max_batch_size,
        "input": [tensor(t) for t in c.inputs],
        "output": [tensor(t) for t in c.outputs],
        "instance_group": [{"name": c.name, "kind": c.instance_kind, "count": c.instance_count}],
        "default_model_filename": c.default_model_filename,
    }
    if c.dynamic_batching:
        out["dynamic_batching"] = {
            "preferred_batch_size": list(c.preferred_batch_sizes),
            "max_queue_delay_microseconds": c.max_queue_delay_us,
        }
    return out


def statistics_json(stats: list[Any]) -> dict[str, Any]:
    models = []
    for s in stats:
        models.append(
            {
                "name": s.model,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {p: {"count": d.count, "ns": d.ns} for p, d in s.phases.items()},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": d.count, "ns": 0},
                        "compute_infer": {"count": d.count, "ns": d.ns},
                        "compute_output": {"count": d.count, "ns": 0},
                    }
                    for size, d in sorted(s.batches.items())
                ],
            }
        )
    return {"model_stats": models}


def require_admin(headers: list[tuple[bytes, bytes]], admin_token: str) -> None:
    auth = b""
    for key, value in headers:
        if key == b"authorization":
            auth = value
    token = auth.removeprefix(b"Bearer ").strip()
    if not admin_token or not hmac.compare_digest(token, admin_token.encode()):
        raise GatewayError(
            Code.UNAUTHENTICATED,
            "loading and unloading models needs the admin token: send 'Authorization: Bearer <admin_token>'",
        )


def require_local(client: str) -> None:
    host = client.rpartition(":")[0]
    if not (host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")):
        raise GatewayError(
            Code.PERMISSION_DENIED, "shared memory is for clients on the gateway's own host; send tensors inline"
        )


def shared_memory(plane: DataPlane, kind: str, rest: list[str], body: bytes, client: str) -> Any:
    """Routes /v2/{system,cuda}sharedmemory/... (the door has checked the method: GET for status, else POST)."""
    if rest == ["status"]:
        return _status(plane, kind, "")
    if rest == ["unregister"]:
        plane.shm_unregister(kind)
        return {}
    if len(rest) == 3 and rest[0] == "region":
        name, action = rest[1], rest[2]
        if action == "status":
            return _status(plane, kind, name)
        if action == "unregister":
            plane.shm_unregister(kind, name)
            return {}
        if action == "register":
            require_local(client)
            if kind == "system":
                sys_body = parse_json(SystemRegisterBody, body)
                plane.shm_register_system(name, sys_body.key, sys_body.offset, sys_body.byte_size)
            else:
                cuda_body = parse_json(CudaRegisterBody, body)
                try:
                    handle = base64.b64decode(cuda_body.raw_handle.b64, validate=True)
                except (binascii.Error, ValueError):
                    raise invalid("raw_handle.b64 is not valid base64") from None
                plane.shm_register_cuda(name, handle, cuda_body.device_id, cuda_body.byte_size)
            return {}
    raise GatewayError(Code.NOT_FOUND, f"no shared memory route /{'/'.join(rest)}")


def _status(plane: DataPlane, kind: str, name: str) -> list[dict[str, Any]]:
    if kind == "system":
        return [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in plane.shm_status(kind, name)
        ]
    return [{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in plane.shm_status(kind, name)]


def shm_target(name: str, params: dict[str, Any]) -> tuple[str, int, int] | None:
    region = params.get("shared_memory_region")
    if region is None:
        return None
    size, offset = params.get("shared_memory_byte_size"), params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or not isinstance(size, int) or not _count(size) or not _count(offset):
        raise invalid(
            f"tensor '{name}': shared_memory_region needs a string region and integer shared_memory_byte_size "
            "(and shared_memory_offset, if given)"
        )
    return region, int(offset), int(size)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def write_shm_output(plane: DataPlane, out: RequestedOutput, data: bytes) -> dict[str, Any]:
    assert out.shm is not None
    region, offset, size = out.shm
    plane.shm_write(out.name, region, offset, size, data)
    return {"shared_memory_region": region, "shared_memory_offset": offset, "shared_memory_byte_size": len(data)}
