"""The tenant file: tenants, their limits and the salted hashes of their API keys (keys are never stored).

Every gateway process reads it and re-reads it when it changes (gateway/tenants/gate.py); the admin API
changes it with an atomic replace, so a running gateway picks up new keys and limits without a restart.
`gateway tenants --file` changes a local copy the same way, e.g. the file a Kubernetes Secret holds (mounted
read-only in the pods, which then follow the Secret instead).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import Code, GatewayError, field_errors

KEY_PREFIX = "gk_"


class Limits(BaseModel):
    """What a tenant may use; None is unlimited."""

    model_config = ConfigDict(extra="forbid")

    priority: str | None = None
    """The tenant's default priority class (a request's priority header overrides it)."""
    requests_per_s: float | None = Field(None, gt=0)
    """Sustained requests per second, per gateway deployment (each of N processes allows 1/N)."""
    rows_per_s: float | None = Field(None, gt=0)
    """Sustained rows (first dimension of the inputs) per second."""
    burst_s: float = Field(1.0, gt=0, le=3600)
    """How many seconds of its rate a tenant may spend at once after being idle (the buckets' depth)."""
    max_inflight: int | None = Field(None, ge=1)
    """Requests of this tenant being answered at once, per model (and per gateway process)."""


class Tenant(Limits):
    key_hashes: list[str] = Field(default_factory=list)
    """hex HMAC-SHA256 of each key under the file's salt."""


class TenantFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    salt: str = Field(default_factory=lambda: secrets.token_hex(16))
    tenants: dict[str, Tenant] = Field(default_factory=dict)

    def key_hash(self, key: str) -> str:
        return hmac.new(bytes.fromhex(self.salt), key.encode(), hashlib.sha256).hexdigest()

    def by_hash(self) -> dict[str, str]:
        return {h: name for name, t in self.tenants.items() for h in t.key_hashes}


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def load(path: Path) -> TenantFile:
    """The file's tenants; an absent file is an empty one (keys on, nobody admitted yet)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return TenantFile()
    except OSError as exc:
        raise ValueError(f"cannot read the tenant file {path}: {exc}") from None
    try:
        return TenantFile.model_validate(json.loads(raw))
    except ValidationError as exc:
        raise ValueError(f"the tenant file {path} is not valid: {field_errors(exc, 'the file')}") from None
    except ValueError as exc:  # not JSON (or not UTF-8)
        raise ValueError(f"the tenant file {path} is not valid: {exc}") from None


def save(path: Path, book: TenantFile) -> None:
    """Replaces the file atomically (readers see the old or the new one, never half of one); owner-only."""
    if path.exists() and not os.access(path, os.W_OK):
        raise GatewayError(
            Code.FAILED_PRECONDITION,
            f"the tenant file {path} is read-only (a mounted secret?): change it where it comes from",
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(book.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GatewayError(Code.FAILED_PRECONDITION, f"cannot write the tenant file {path}: {exc}") from None
