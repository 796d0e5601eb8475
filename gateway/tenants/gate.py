"""The tenant gate the data plane asks before it queues a request: which tenant (by API key), whether it is
within its rate (token buckets for requests/s and rows/s) and its in-flight quota for the model.

It follows the tenant file (store.py), re-read when its modification time changes, and changes it for the
admin API and for `gateway tenants --file` (both through `operate`, so both check and answer alike). Limits are
per gateway deployment: each of N processes allows 1/N of a tenant's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import Code, GatewayError, Refusal, parse_json
from gateway.tenants.store import Limits, Tenant, TenantFile, load, new_key, save

log = logging.getLogger(__name__)


class TenantRefusal(GatewayError):
    """A refusal of a known tenant (over its rate or quota): says whose, for the refusal metrics."""

    def __init__(self, tenant: str, priority: str | None, message: str, retry_after_s: float, refusal: Refusal):
        super().__init__(Code.RESOURCE_EXHAUSTED, message, retry_after_s=retry_after_s, refusal=refusal)
        self.tenant = tenant
        self.priority = priority


class TokenBucket:
    """Holds up to `rate * burst_s` tokens, refilled at `rate` per second."""

    def __init__(self, rate: float, burst_s: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_s, 1.0)
        self.tokens = self.capacity
        self.clock = clock
        self._at = clock()

    def take(self, n: float) -> float:
        """Takes n tokens and returns 0, or takes none and returns the seconds until n would be there. More
        than the bucket holds is allowed from a full bucket (it goes into debt), so no request is too big."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now
        need = min(n, self.capacity)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request let through: give it back with `TenantGate.release` when it is answered."""

    tenant: str
    model: str
    priority: str | None  # the tenant's default class
    counted: bool  # holds one of the tenant's in-flight places at the model


class _State:
    def __init__(self, limits: Limits, share: float, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.requests = (
            TokenBucket(limits.requests_per_s * share, limits.burst_s, clock) if limits.requests_per_s else None
        )
        self.rows = TokenBucket(limits.rows_per_s * share, limits.burst_s, clock) if limits.rows_per_s else None


class TenantGate:
    def __init__(
        self, path: Path, *, share: float = 1.0, reload_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.share = share
        self.reload_s = reload_s
        self.clock = clock
        self._book = TenantFile()
        self._by_hash: dict[str, str] = {}
        self._state: dict[str, _State] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._stamp: tuple[int, int] | None = None
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self.reload()

    # --- the hot path -------------------------------------------------------------------
    def admit(self, key: str, model: str) -> Admitted:
        """UNAUTHENTICATED for a missing or unknown key; RESOURCE_EXHAUSTED (429) over rate or quota."""
        name = self._by_hash.get(self._book.key_hash(key)) if key else None
        if name is None:
            raise GatewayError(
                Code.UNAUTHENTICATED,
                "missing API key" if not key else "unknown API key",
                refusal=Refusal.UNAUTHENTICATED,
            )
        state = self._state[name]
        quota = state.limits.max_inflight
        now = self._inflight.get((name, model), 0)
        if quota is not None and now >= quota:
            raise TenantRefusal(
                name,
                state.limits.priority,
                f"tenant '{name}' has {now} requests in flight at model '{model}', its quota; "
                "wait for answers before sending more",
                0.05,
                Refusal.QUOTA,
            )
        if state.requests is not None:
            wait = state.requests.take(1)
            if wait > 0:
                raise _over(name, state.limits, f"its rate of {state.limits.requests_per_s:g} requests/s", wait)
        if quota is not None:
            self._inflight[(name, model)] = now + 1
        return Admitted(name, model, state.limits.priority, quota is not None)

    def take_rows(self, admitted: Admitted, rows: int) -> None:
        state = self._state.get(admitted.tenant)
        if state is None or state.rows is None:
            return
        wait = state.rows.take(rows)
        if wait > 0:
            raise _over(admitted.tenant, state.limits, f"its rate of {state.limits.rows_per_s:g} rows/s", wait)

    def release(self, admitted: Admitted) -> None:
        if admitted.counted:
            k = (admitted.tenant, admitted.model)
            left = self._inflight.get(k, 1) - 1
            if left > 0:
                self._inflight[k] = left
            else:
                self._inflight.pop(k, None)

    # --- following the file ------------------------------------------------------------
    def reload(self) -> bool:
        """Re-reads the file if it changed; True when it did. A broken file keeps the last good one."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return False
        try:
            book = load(self.path)
        except ValueError as exc:
            log.error("%s; keeping the tenants read before", exc)
            return False
        self._stamp = stamp
        self._apply(book)
        return True

    def _apply(self, book: TenantFile) -> None:
        old = self._state
        state = {}
        for name, tenant in book.tenants.items():
            limits = Limits(**tenant.model_dump(exclude={"key_hashes"}))
            kept = old.get(name)
            # Unchanged limits keep their buckets: a reload must not hand out a fresh burst.
            state[name] = kept if kept is not None and kept.limits == limits else _State(limits, self.share, self.clock)
        self._book, self._by_hash, self._state = book, book.by_hash(), state

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.reload)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    # --- the admin API's operations -----------------------------------------------------
    def view(self) -> dict[str, Any]:
        return {
            "tenants": {
                name: {**t.model_dump(exclude={"key_hashes"}), "keys": len(t.key_hashes)}
                for name, t in sorted(self._book.tenants.items())
            }
        }

    async def add(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A new tenant with one new key; the key is in the answer and nowhere else."""
        limits = Limits(**fields)

        def change(book: TenantFile, key: str) -> None:
            if name in book.tenants:
                raise GatewayError(Code.ALREADY_EXISTS, f"tenant '{name}' exists; use rotate or set-limits")
            book.tenants[name] = Tenant(**limits.model_dump(), key_hashes=[book.key_hash(key)])

        return await self._change(name, change, with_key=True)

    async def rotate(self, name: str, keep_old: bool = False) -> dict[str, Any]:
        """A new key for the tenant; the old ones stop working at once unless keep_old."""

        def change(book: TenantFile, key: str) -> None:
            tenant = _existing(book, name)
            tenant.key_hashes = [*(tenant.key_hashes if keep_old else []), book.key_hash(key)]

        return await self._change(name, change, with_key=True)

    async def set_limits(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        def change(book: TenantFile, key: str) -> None:
            tenant = _existing(book, name)
            merged = Limits(**{**tenant.model_dump(exclude={"key_hashes"}), **fields})
            book.tenants[name] = Tenant(**merged.model_dump(), key_hashes=tenant.key_hashes)

        return await self._change(name, change)

    async def remove(self, name: str) -> dict[str, Any]:
        def change(book: TenantFile, key: str) -> None:
            _existing(book, name)
            del book.tenants[name]

        return await self._change(name, change)

    async def _change(
        self, name: str, change: Callable[[TenantFile, str], None], with_key: bool = False
    ) -> dict[str, Any]:
        async with self._lock:
            try:
                book = load(self.path)
            except ValueError as exc:
                raise GatewayError(Code.FAILED_PRECONDITION, str(exc)) from None
            key = new_key()
            change(book, key)
            await asyncio.to_thread(save, self.path, book)
            self.reload()
        out: dict[str, Any] = {"tenant": name, **self.view()["tenants"].get(name, {})}
        if with_key:
            out["key"] = key  # shown once; only its hash is kept
        return out


# --- one operation, wherever it comes from ------------------------------------------------

Action = Literal["list", "add", "rotate", "set-limits", "remove"]

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

ROUTES: dict[Action, tuple[str, str]] = {
    "list": ("GET", ""),
    "add": ("POST", ""),
    "rotate": ("POST", "/rotate"),
    "set-limits": ("PUT", "/limits"),
    "remove": ("DELETE", ""),
}
"""Each action's admin API route (gateway/doors/admin.py serves them, `gateway tenants` calls them): its method,
and what follows /admin/tenants/{name} ("list" is GET /admin/tenants itself)."""


class Tenants(Protocol):
    """The tenant operations (TenantGate's): the admin API offers them, `gateway tenants --file` runs them."""

    def view(self) -> dict[str, Any]: ...

    async def add(self, name: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def rotate(self, name: str, keep_old: bool = False) -> dict[str, Any]: ...

    async def set_limits(self, name: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def remove(self, name: str) -> dict[str, Any]: ...


class LimitsChange(BaseModel):
    """The body of add and set-limits (set-limits changes only the fields it names; null is unlimited)."""

    model_config = ConfigDict(extra="forbid")

    priority: str | None = Field(None, max_length=64)
    requests_per_s: float | None = Field(None, gt=0)
    rows_per_s: float | None = Field(None, gt=0)
    burst_s: float = Field(1.0, gt=0, le=3600)
    max_inflight: int | None = Field(None, ge=1)


class RotateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_old: bool = False


def check_name(name: str) -> str:
    if not TENANT_NAME.fullmatch(name):
        raise GatewayError(
            Code.INVALID_ARGUMENT, "a tenant name is 1-64 letters, digits, '_', '.' or '-', starting alphanumeric"
        )
    return name


async def operate(tenants: Tenants, action: Action, name: str = "", body: bytes = b"") -> dict[str, Any]:
    """One tenant operation with its JSON body, checked the same way whether the admin API received it or
    `gateway tenants --file` runs it on a local file. INVALID_ARGUMENT for a bad name or body; NOT_FOUND,
    ALREADY_EXISTS or FAILED_PRECONDITION from the operation itself."""
    if action == "list":
        return tenants.view()
    check_name(name)
    if action == "add":
        return await tenants.add(name, parse_json(LimitsChange, body or b"{}").model_dump())
    if action == "rotate":
        return await tenants.rotate(name, parse_json(RotateChange, body or b"{}").keep_old)
    if action == "set-limits":
        return await tenants.set_limits(name, parse_json(LimitsChange, body).model_dump(exclude_unset=True))
    return await tenants.remove(name)


def _existing(book: TenantFile, name: str) -> Tenant:
    tenant = book.tenants.get(name)
    if tenant is None:
        raise GatewayError(Code.NOT_FOUND, f"no tenant '{name}'; 'gateway tenants list' shows them")
    return tenant


def _over(name: str, limits: Limits, what: str, wait_s: float) -> TenantRefusal:
    return TenantRefusal(
        name,
        limits.priority,
        f"tenant '{name}' is over {what}; retry after {wait_s:.2f} s",
        wait_s,
        Refusal.RATE_LIMITED,
    )
