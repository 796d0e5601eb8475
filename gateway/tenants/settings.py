"""Settings of tenants and of overload control (priority classes, shedding, deadline-aware admission)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    """Require an API key on every inference request (401 / UNAUTHENTICATED without a known one)."""
    file: Path = Path("tenants.json")
    """The tenant file: tenants, their limits and their keys' salted hashes; a mounted Kubernetes secret works
    (the admin API then refuses changes: change the secret instead)."""
    key_header: str = "x-api-key"
    """Header (HTTP) or metadata key (gRPC) carrying the API key."""
    reload_s: float = Field(1.0, gt=0, le=60)
    """How often every gateway process looks for a changed tenant file."""


class OverloadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priorities: list[str] = Field(default_factory=lambda: ["critical", "default", "batch"], min_length=1)
    """Priority classes, highest first; a request names one in the priority header, else its tenant's default."""
    default_priority: str = "default"
    """The class of a request that names none and whose tenant has no default."""
    priority_header: str = "x-priority"
    """Header (HTTP) or metadata key (gRPC) naming a request's priority class."""
    scheduling: Literal["priority", "fifo"] = "priority"
    """priority: the batcher serves higher classes first, round robin between a class's tenants, and sheds the
    lowest class first when full; fifo: one queue in arrival order (classes are recorded, not acted on)."""
    lower_share: float = Field(0.05, ge=0, le=0.5)
    """At least this share of batches is led by the lower class that has waited longest, so none starves."""
    admission: bool = True
    """Refuse at once (DEADLINE_EXCEEDED) a request whose predicted answer time is past its deadline."""

    @model_validator(mode="after")
    def _known_default(self) -> OverloadSettings:
        if len(set(self.priorities)) != len(self.priorities):
            raise ValueError(f"priorities {self.priorities} name a class twice")
        if self.default_priority not in self.priorities:
            raise ValueError(f"default_priority '{self.default_priority}' is not one of priorities {self.priorities}")
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.priorities)
