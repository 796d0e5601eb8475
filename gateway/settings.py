"""Gateway settings: one pydantic object, read from an optional YAML file and GATEWAY_* environment variables.

Validated once at start-up; a bad value stops the process with a message naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.drift.settings import DriftSettings
from gateway.request_log.settings import RequestLogSettings
from gateway.telemetry.tracing import TracingSettings
from gateway.tenants.settings import OverloadSettings, TenantSettings
from gateway.tls import TlsSettings


class BatchingOverride(BaseModel):
    """Gateway-side overrides of a model's manifest batching; unset fields keep the manifest's value."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1, le=65536)
    max_wait_ms: float | None = Field(None, ge=0, le=10_000)
    max_queue_rows: int | None = Field(None, ge=1)
    preferred_batch_sizes: list[int] | None = None
    max_inflight_batches: int | None = Field(None, ge=1, le=1024)
    enabled: bool | None = None


class ShadowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_inflight: int = Field(256, ge=1, le=100_000)
    """Shadow calls running at once per gateway process; a copy beyond this is dropped (and counted)."""
    timeout_ms: float = Field(10_000, gt=0)
    """Deadline of one shadow call; a shadow slower than this is abandoned (and counted)."""
    max_request_bytes: int = Field(1 << 20, ge=1)
    """A request whose inputs are bigger than this is not mirrored (counted as dropped, reason too_large): with
    max_inflight, it bounds the memory shadow calls hold."""
    batch_wait_ms: float = Field(100, ge=0, le=10_000)
    """How long a shadow copy waits for others to share its call: mirroring then costs few Ray calls."""
    agreement_atol: float = Field(1e-3, ge=0)
    """Outputs agree when every numeric element is within this of the primary's (other types: equal)."""


class ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    join_interval_s: float = Field(5.0, gt=0, le=3600)
    """How often a gateway joins new outcomes (request log + feedback) and reports them to the traffic table."""
    max_pending: int = Field(200_000, ge=100, le=10_000_000)
    """Answered requests per experiment kept waiting for their label (and labels for their request); oldest go."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    """Address both prediction doors and the metrics endpoint bind to."""
    http_port: int = Field(8000, ge=0, le=65535)
    """HTTP/REST door (0 picks a free port)."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """gRPC door (0 picks a free port)."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Prometheus metrics endpoint (0 picks a free port)."""
    repository: Path = Path("model_repository")
    """Model repository root: <root>/<model>/<version>/manifest.json."""
    example_models: bool = True
    """Train and write the example models into the repository when it holds none."""
    ray_address: str | None = None
    """Address of an existing Ray cluster; unset starts an embedded local one."""
    ray_num_cpus: int | None = Field(None, ge=1)
    """CPUs the embedded Ray cluster may use (default: all)."""
    ray_transport: Literal["grpc", "actor"] = "grpc"
    """How a batch reaches a replica: Ray Serve's direct gRPC channel ("grpc", less CPU per call) or Ray
    actor calls ("actor")."""
    fpga_resource: str = "FPGA"
    """Ray custom resource name that FPGA model versions ask for."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body or gRPC message accepted; bigger ones get 413 / RESOURCE_EXHAUSTED."""
    max_tensor_elements: int = Field(16 * 1024 * 1024, ge=1)
    """Largest element count of one input tensor, checked before decoding."""
    max_request_rows: int = Field(65536, ge=1)
    """Most rows (first dimension) one request may carry, checked from the declared shapes before decoding;
    a batched model's own max_batch_size applies too."""
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    """Largest request line plus headers (HTTP) or metadata (gRPC) accepted; bigger ones are refused
    (HTTP 431, gRPC RESOURCE_EXHAUSTED) before they are buffered further."""
    stream_max_inflight: int = Field(256, ge=1, le=65536)
    """Requests one ModelStreamInfer stream may have in the gateway at once (read, not yet answered on the wire);
    past it the stream stops reading until answers are written, so a client that never reads holds bounded memory."""
    shared_memory_regions: int = Field(64, ge=0, le=4096)
    """Shared-memory regions (system and CUDA together) clients on this host may register with one gateway
    process; 0 turns the shared-memory extensions off."""
    repository_control: bool = False
    """Allow loading and unloading models at run time (RepositoryModelLoad/Unload and POST
    /v2/repository/models/{m}/load|unload), guarded by admin_token."""
    drain_s: float = Field(10.0, gt=0, le=600)
    """On SIGTERM: how long in-flight requests may take to finish before the doors close."""
    default_timeout_ms: float = Field(30_000, gt=0)
    """Deadline for a request that brings none of its own."""
    batching: dict[str, BatchingOverride] = Field(default_factory=dict)
    """Per-model batching overrides, keyed by model name ('*' applies to every model)."""
    traffic: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Initial traffic split per model, e.g. {breast_cancer: {"1": 90, "2": 10}} (percent per version);
    a model not listed sends unpinned requests to its newest ready version."""
    traffic_file: Path = Path("traffic_table.json")
    """Where the cluster's traffic table persists (on the node running its actor), so a restart of Ray keeps it."""
    admin_host: str = "127.0.0.1"
    """Address of the admin API; keep it off public interfaces."""
    admin_port: int = Field(8003, ge=0, le=65535)
    """Admin API port (traffic changes), apart from the prediction ports."""
    admin_token: str = ""
    """Bearer token the admin API requires on every call; empty leaves the admin API off."""
    routing_header: str = "x-routing-key"
    """Header (HTTP) or metadata key (gRPC) carrying a sticky routing key."""
    ready_timeout_s: float = Field(300, gt=0)
    """How long `serve` waits for model versions to become ready before it reports them not ready."""
    workers: int = Field(1, ge=1, le=64)
    """Gateway processes sharing the ports (SO_REUSEPORT); each has its own batchers and Ray connection."""
    log_level: str = "WARNING"
    """Level of the gateway's own log (per-request events are never logged at INFO)."""
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)
    """The request log: one record per answered request, errors included (docs/REQUEST_LOG.md)."""
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    """OpenTelemetry tracing of inference requests (off by default; README, "Tracing")."""
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    """Limits of shadow traffic (which versions shadow is the traffic table's business)."""
    tls: TlsSettings = Field(default_factory=TlsSettings)
    """TLS for the prediction doors and TLS + client certificates for the admin API (off by default)."""
    drift: DriftSettings = Field(default_factory=DriftSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    """How gateways join experiment outcomes (the experiments themselves live in the traffic table)."""
    """The drift sidecar: windows, statistics, alarm policy, reports, retraining jobs (docs/DRIFT.md)."""
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    """API keys, rate limits and in-flight quotas per tenant (off by default; docs/OVERLOAD.md)."""
    overload: OverloadSettings = Field(default_factory=OverloadSettings)
    """Priority classes, shedding and deadline-aware admission (docs/OVERLOAD.md)."""

    @model_validator(mode="after")
    def _admin_apart(self) -> GatewaySettings:
        public = {p for p in (self.http_port, self.grpc_port, self.metrics_port) if p}
        if self.admin_port and self.admin_port in public:
            raise ValueError(
                f"admin_port {self.admin_port} is also a prediction or metrics port; "
                "the admin API must listen on a port of its own"
            )
        return self

    @model_validator(mode="after")
    def _control_needs_token(self) -> GatewaySettings:
        if self.repository_control and not self.admin_token:
            raise ValueError("repository_control needs admin_token: loading and unloading models is an admin call")
        return self

    def batching_for(self, model: str) -> BatchingOverride:
        merged: dict[str, Any] = {}
        for key in ("*", model):
            if key in self.batching:
                merged.update(self.batching[key].model_dump(exclude_none=True))
        return BatchingOverride(**merged)


class SettingsError(Exception):
    pass


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Build settings from a YAML file, then the environment, then explicit overrides (highest)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read settings file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"settings file {config_file} must hold a mapping of setting: value")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # Init kwargs outrank the environment in pydantic-settings; keep the file below it.
        env_only = GatewaySettings()
        env_set = env_only.model_fields_set
        env_data = env_only.model_dump(exclude_unset=True)
        file_data = {}
        for k, v in data.items():
            if k not in env_set or k in overrides:
                file_data[k] = v
            elif isinstance(v, dict) and isinstance(env_data.get(k), dict):
                file_data[k] = _deep_merge(v, env_data[k])  # e.g. one GATEWAY_BATCHING__m__x keeps the file's others
        return GatewaySettings(**file_data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("invalid gateway settings:\n" + "\n".join(lines)) from None
