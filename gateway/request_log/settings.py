"""Settings of the request log: where it writes, how durable an answer's record is, what it keeps.

Nested in `GatewaySettings.request_log`; environment variables reach it as GATEWAY_REQUEST_LOG__<FIELD>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Durability = Literal["buffered", "fsync", "async"]
FullPolicy = Literal["reject", "drop"]
Redaction = Literal["mask", "drop"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class RequestLogSettings(BaseModel):
    """The request log: one JSON line per answered request, in rotated segment files (docs/REQUEST_LOG.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Write a record of every answered request (errors included) before the answer leaves."""
    dir: Path = Path("request_log")
    """Log root; each gateway process writes <dir>/<gateway_id>/segment-<seq>.jsonl."""
    gateway_id: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$", max_length=128)
    """This gateway's name in records and its folder under dir; empty means the host name.
    A name another live process holds gets the next free '<name>-<n>'."""
    durability: Durability = "buffered"
    """When append returns: 'buffered' once written to the OS (survives a gateway crash), 'fsync' once
    on disk (survives a machine crash), 'async' at once (a crash may lose queued records)."""
    on_full: FullPolicy = "reject"
    """When the queue is full or the directory is unwritable: 'reject' answers the request 503
    UNAVAILABLE rather than lose its record; 'drop' answers it and counts the record as dropped."""
    max_queue_records: int = Field(10_000, ge=1, le=10_000_000)
    """Records accepted but not yet written, at most (the bound of the writer's queue)."""
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """A segment is closed once it holds about this many bytes."""
    rotate_s: float = Field(300.0, gt=0)
    """A segment is closed once it is this old, so that it can be compacted and shipped."""
    retain_bytes: int | None = Field(10 * 1024**3, ge=1024)
    """Closed segments are deleted, oldest first, while this gateway's segments total more (None: no limit)."""
    retain_s: float | None = Field(7 * 24 * 3600.0, gt=0)
    """Closed segments last written longer ago than this are deleted (None: no limit)."""
    max_record_bytes: int = Field(1024 * 1024, ge=4096)
    """A bigger record loses its tensor data (kept: names, datatypes, shapes) and is marked truncated."""
    sample: dict[str, Probability] = Field(default_factory=dict)
    """Per-model probability that a successful request is logged ('*' for every model; default 1.0).
    Errors are always logged."""
    redact_inputs: dict[str, Redaction] = Field(default_factory=dict)
    """Input tensors by name whose data is never logged: 'mask' keeps name, datatype and shape; 'drop' omits it."""
    retry_s: float = Field(1.0, gt=0, le=60)
    """How often an unhealthy log (unwritable directory, full disk) tries its directory again."""

    def sample_rate(self, model: str) -> float:
        return self.sample.get(model, self.sample.get("*", 1.0))
