"""Protocol-neutral request/response types: adapters build these at the edge, the core never sees wire objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.tensors import Arrays, Tensor

__all__ = [
    "Arrays",
    "InferRequest",
    "InferResponse",
    "ModelConfig",
    "ModelMetadata",
    "RequestRecord",
    "RequestedOutput",
    "ShmRegion",
    "Tensor",
    "TensorSpec",
    "Timing",
    "VersionStatus",
]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared input or output: shape uses -1 for a variable dimension (the first one is the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # HTTP binary extension choice; None = adapter default
    shm: tuple[str, int, int] | None = None  # (region, offset, byte_size): written there, not in the response


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: str
    inputs: tuple[Tensor, ...]
    version: str | None = None  # an explicit pin
    id: str = ""
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = None
    deadline: float | None = None  # time.monotonic() seconds
    received_at: float = 0.0  # time.monotonic() when the adapter took it
    client: str = ""  # peer address, for the request log
    protocol: str = ""  # "grpc" or "http"
    traceparent: str = ""  # the caller's W3C traceparent, checked by the adapter ("" if absent or malformed)
    tracestate: str = ""  # the caller's W3C tracestate, passed on as is
    api_key: str = ""  # the tenant's API key from the key header ("" if absent); never logged
    priority: str = ""  # the requested priority class ("" = the tenant's default)


@dataclass(frozen=True, slots=True)
class InferResponse:
    model: str
    version: str
    outputs: tuple[Tensor, ...]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    traceparent: str = ""  # the request's server span when tracing is on; adapters send it back


@dataclass(slots=True)
class Timing:
    """Where a request's time went; the batcher fills it in (all zero on the unbatched path)."""

    input_s: float = 0.0  # from receipt to the batch queue: decoding, validation, routing
    queue_s: float = 0.0  # waiting in the gateway's batch queue
    model_s: float = 0.0  # the Ray call carrying its batch (transport + replica + model)
    batch_rows: int = 0
    batch_requests: int = 0


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request (or shadow call), as the request log stores it."""

    request_id: str
    time: float  # unix seconds when the gateway received it
    model: str
    version: str  # "" when no version was resolved (unknown model, for example)
    role: str  # primary | canary | pinned | shadow
    routing_reason: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    code: str  # "OK" or the error table's code name
    error: str
    queue_ms: float
    model_ms: float
    total_ms: float
    batch_rows: int
    client: str
    protocol: str
    trace_id: str = ""
    tenant: str = ""  # "" when tenants are off
    priority: str = ""  # the class it was served (or refused) in; "" when it was refused before one was chosen


@dataclass(frozen=True, slots=True)
class VersionStatus:
    model: str
    version: str
    state: str  # READY | UNAVAILABLE | LOADING
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A version's configuration in Triton's terms (model_config.proto), as far as the manifest maps to it."""

    name: str
    platform: str
    backend: str
    versions: tuple[str, ...]
    max_batch_size: int  # 0: the version does not batch (and dims keep the first dimension)
    inputs: tuple[TensorSpec, ...]  # shapes without the batch dimension when max_batch_size > 0
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_kind: str  # KIND_CPU | KIND_GPU | KIND_MODEL
    instance_count: int
    default_model_filename: str


@dataclass(frozen=True, slots=True)
class ShmRegion:
    """A registered shared-memory region, as status calls report it."""

    name: str
    kind: str  # "system" | "cuda"
    byte_size: int
    key: str = ""  # system: the shm_open key
    offset: int = 0  # system: where the region starts in the key's file
    device_id: int = 0  # cuda
