"""The manifest of one immutable model version: signature, runtime, accelerator, batching, lineage.

Stored as `<root>/<model>/<version>/manifest.json` and validated with pydantic on every read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


class TensorSpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]
    """-1 marks a variable dimension; with batching on, the first dimension is the batch."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            raise ValueError(f"unknown datatype {v!r}; expected one of {', '.join(DATATYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in v):
            raise ValueError("dimensions must be positive or -1 (variable)")
        return v


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Coalesce concurrent requests along the first dimension (the gateway and the replica both do)."""
    max_batch_size: int = Field(256, ge=1)
    """Most rows in one call to a replica; also the most rows one request may carry."""
    max_wait_ms: float = Field(0.0, ge=0)
    """Longest a request waits for company when a dispatch slot is free (0: never waits)."""
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    """Row counts the model runs best at (e.g. compiled shapes): a batch is cut to the largest one that
    fits, and waiting for company (max_wait_ms) stops as soon as one is reached. Empty: no preference."""
    max_queue_rows: int = Field(8192, ge=1)
    """Rows waiting in the gateway's queue for this version before it answers 'overloaded'."""
    max_inflight_batches: int | None = Field(None, ge=1)
    """Concurrent calls from one gateway process to this version (default: one per replica). One is enough
    to keep a replica busy: the next batch fills while the current one runs, and each Ray call costs
    milliseconds of CPU on both sides, so fewer, larger calls serve more."""
    replica_max_batch_size: int = Field(8, ge=1)
    """Calls a replica merges across gateway processes (@serve.batch)."""
    replica_batch_wait_ms: float = Field(0.0, ge=0)
    """How long a replica waits for more calls before it runs what it has. Calls that arrive while a batch runs
    are merged into the next one without any wait, so a wait only adds latency at light load (and event-loop
    work in the replica); raise it only for many gateway processes that each send small batches."""


class Accelerator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cpu", "gpu", "fpga"] = "cpu"
    count: float = Field(1.0, gt=0)
    """GPUs (fractions allowed) or FPGA resource units per replica."""


class RemoteBackend(BaseModel):
    """Where a `remote` version's model runs: another Open Inference Protocol server (Triton, KServe, MLServer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """host:port of the remote server's gRPC or HTTP endpoint (no scheme; see protocol and tls)."""
    protocol: Literal["grpc", "http"] = "grpc"
    model_name: str = ""
    """The model's name on the remote server (default: this manifest's name)."""
    model_version: str = ""
    """The version to ask the remote server for (default: the remote server's choice)."""
    timeout_s: float = Field(30.0, gt=0)
    """Longest one forwarded batch may take; past it the requests in it fail with DEADLINE_EXCEEDED."""
    tls: bool = False
    """Connect with TLS (the system's trusted roots)."""

    @field_validator("url")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if "://" in v or "/" in v:
            raise ValueError(f"url {v!r} must be host:port, without a scheme or path (set protocol and tls instead)")
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"url {v!r} must be host:port with a port between 1 and 65535")
        return v


class Lineage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    parent_version: str | None = None
    dataset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    trained_at: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    runtime: Literal["onnx", "array", "python", "remote"]
    """onnx: an ONNX file run by ONNX Runtime; array: a NumPy/CuPy program; python: predict() in model.py;
    remote: forwarded to another Open Inference Protocol server (the `remote` block)."""
    artifact: str = ""
    """File inside the version folder that the runtime loads."""
    platform: str = ""
    """Reported in model metadata (defaults from the runtime)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Runtime-specific options (the array runtime's program, for example)."""
    inputs: list[TensorSpecModel]
    outputs: list[TensorSpecModel]
    accelerator: Accelerator = Accelerator()
    batching: Batching = Batching()
    replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(0.25, ge=0)
    """Ray CPU share a replica reserves (a scheduling hint; replicas of small models share cores)."""
    max_ongoing_requests: int = Field(128, ge=1)
    """Calls one replica holds at once (Ray Serve's max_ongoing_requests); @serve.batch merges them, so
    this can be high. Callers past it wait in Ray's router with back-off, which is slow."""
    max_queued_requests: int = Field(512, ge=1)
    """Calls queued for this version inside Ray before Ray refuses them (bounded, never -1)."""
    nan_policy: Literal["allow", "reject"] = "allow"
    """Floating-point inputs holding NaN or +-Inf: 'allow' passes them to the model, 'reject' refuses the
    request (400 / INVALID_ARGUMENT naming the input) before it is queued."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Evaluation metrics at training time."""
    lineage: Lineage = Lineage()
    reference: str | None = None
    """File of reference statistics of the training inputs (for drift detection)."""
    remote: RemoteBackend | None = None
    """The remote server of a `remote` version (required with that runtime, refused with any other)."""

    @model_validator(mode="after")
    def _remote_block(self) -> Manifest:
        if self.runtime == "remote" and self.remote is None:
            raise ValueError("runtime 'remote' needs a 'remote' block with at least the server's url")
        if self.runtime != "remote" and self.remote is not None:
            raise ValueError(f"a 'remote' block only applies to runtime 'remote', not {self.runtime!r}")
        return self

    @property
    def display_platform(self) -> str:
        return (
            self.platform
            or {"onnx": "onnxruntime_onnx", "array": "numpy", "python": "python", "remote": "remote"}[self.runtime]
        )
