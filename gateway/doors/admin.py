"""The admin API (own port, bearer token on every call): operators read and change the traffic table.

    GET  /admin/traffic                     the whole table
    GET  /admin/traffic/{model}             one model: weights, shadows, running ramp
    PUT  /admin/traffic/{model}             {"weights": {"1": 90, "2": 10}, "reason": ...}
    PUT  /admin/traffic/{model}/shadows     {"shadows": {"3": 0.2}}   ({} stops shadowing)
    POST /admin/traffic/{model}/ramp        {"version", "steps", "every_s", "max_error_rate", "max_p99_ms", ...}
    POST /admin/traffic/{model}/promote     {"version": "2"}
    POST /admin/traffic/{model}/rollback    {} (ends a ramp at its starting split, or undoes the last change)
    GET  /admin/traffic/{model}/history     every change: who, when, before, after, why

A change is validated against this gateway's catalog (weights, versions exist and are ready) before
it is stored in the cluster's table; every gateway then follows the table (Gateway._follow_traffic).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.ramp import PlanError, RampPlan, split_with
from gateway.core import DataPlane
from gateway.doors.http import read_body
from gateway.errors import Code, GatewayError
from gateway.traffic.routing import ModelSplit, TrafficTable, applicable, only, versions_named

Scope = dict[str, Any]
JSON = [(b"content-type", b"application/json")]
M = TypeVar("M", bound=BaseModel)


class TrafficStore(Protocol):
    async def get(self) -> dict[str, Any]: ...

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]: ...

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]: ...

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]: ...

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]: ...

    async def history(self, model: str) -> list[dict[str, Any]]: ...


# Finds versions added to the repository since start-up and starts serving them (Gateway.discover).
Discover = Callable[[set[tuple[str, str]]], Awaitable[None]]


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000)


class SplitChange(_Change):
    weights: dict[str, int]


class ShadowChange(_Change):
    shadows: dict[str, float]
    """Shadow version -> fraction of the model's requests mirrored to it; {} stops shadowing."""


class RampChange(_Change):
    version: str
    steps: list[int] = Field(min_length=1)
    every_s: float = Field(gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_p99_ms: float | None = Field(None, gt=0)
    min_requests: int = Field(20, ge=0)


class PromoteChange(_Change):
    version: str


def table_from(stored: dict[str, Any]) -> TrafficTable:
    return TrafficTable(revision=int(stored["revision"]),
                        models={m: ModelSplit(weights=w) for m, w in stored["models"].items()},
                        shadows=stored.get("shadows", {}), ramps=stored.get("ramps", {}))


class AdminApi:
    def __init__(self, plane: DataPlane, store: TrafficStore, token: str, discover: Discover | None = None) -> None:
        if not token:
            raise ValueError("the admin API needs a token")
        self.plane = plane
        self.store = store
        self.discover = discover
        self._token = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, payload = await self._handle(scope, receive)
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Any) -> tuple[int, Any]:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(auth, self._token):  # constant time: no guessing the token byte by byte
            return 401, {"error": "missing or wrong bearer token (Authorization: Bearer <admin_token>)"}
        parts = scope["path"].strip("/").split("/")
        method = scope["method"]
        if parts[:2] != ["admin", "traffic"] or len(parts) > 4:
            return 404, {"error": f"no admin route {method} {scope['path']}"}
        model, action = [*parts, None, None][2:4]
        try:
            if model is None and method == "GET":
                return 200, await self.store.get()
            if model is not None and action is None and method == "GET":
                table = await self.store.get()
                return 200, {"model": model, "weights": table["models"].get(model),
                             "shadows": table.get("shadows", {}).get(model, {}),
                             "ramp": table.get("ramps", {}).get(model), "revision": table["revision"]}
            if model is not None and action is None and method == "PUT":
                return 200, await self._set(model, await read_body(scope, receive, MAX_BODY_BYTES), scope)
            if action == "history" and method == "GET":
                return 200, await self.store.history(model)
            if action == "shadows" and method == "PUT":
                return 200, await self._shadows(model, await read_body(scope, receive, MAX_BODY_BYTES), scope)
            if action == "ramp" and method == "POST":
                return 200, await self._ramp(model, await read_body(scope, receive, MAX_BODY_BYTES), scope)
            if action == "promote" and method == "POST":
                promote = _parse(PromoteChange, await read_body(scope, receive, MAX_BODY_BYTES))
                raw = orjson.dumps({"weights": {promote.version: 100}, "reason": promote.reason
                                    or f"promote version {promote.version}"})
                return 200, await self._set(model, raw, scope)
            if action == "rollback" and method == "POST":
                body = await read_body(scope, receive, MAX_BODY_BYTES)
                change = _parse(_Change, body or b"{}")
                self.plane.catalog.model_versions(model)  # NOT_FOUND for an unknown model
                return 200, self._applied(await self.store.rollback(model, _who(scope), change.reason))
        except GatewayError as exc:
            return exc.http_status, {"error": exc.message}
        return 404, {"error": f"no admin route {method} {scope['path']}"}

    async def _check(self, candidate: TrafficTable, model: str) -> None:
        """NOT_FOUND / INVALID_ARGUMENT for the model's new entry (other models may be served by other gateways);
        a version this gateway has not seen yet is looked for in the repository."""
        entry = only(candidate, {model})
        try:
            self.plane.router.check(entry)
        except GatewayError as exc:
            if exc.code != Code.NOT_FOUND or self.discover is None:
                raise
            try:
                await self.discover(versions_named(entry))
            except Exception as exc:  # noqa: BLE001 - the repository or Ray failed: say so, change nothing
                raise GatewayError(Code.UNAVAILABLE, f"cannot look for new versions in the repository: {exc}") \
                    from None
            self.plane.router.check(entry)

    async def _current(self) -> TrafficTable:
        return table_from(await self.store.get())

    def _applied(self, stored: dict[str, Any]) -> dict[str, Any]:
        router = self.plane.router
        router.apply(applicable(table_from(stored), self.plane.catalog, router.table)[0])
        return stored

    async def _set(self, model: str, raw: bytes, scope: Scope) -> dict[str, Any]:
        change = _parse(SplitChange, raw)
        try:
            split = ModelSplit(weights=change.weights)
        except ValidationError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, "; ".join(e["msg"] for e in exc.errors())) from None
        current = await self._current()
        await self._check(current.model_copy(update={"models": {**current.models, model: split}}), model)
        return self._applied(await self.store.set_model(model, split.weights, _who(scope), change.reason))

    async def _shadows(self, model: str, raw: bytes, scope: Scope) -> dict[str, Any]:
        change = _parse(ShadowChange, raw)
        current = await self._current()
        await self._check(current.model_copy(update={"shadows": {**current.shadows, model: change.shadows}}), model)
        for version in change.shadows:  # a new shadow must be able to answer now
            info = self.plane.catalog.get(model, version)
            if not info.ready:
                raise GatewayError(Code.INVALID_ARGUMENT, f"model '{model}' version '{version}' is not ready "
                                   f"({info.reason}); it cannot shadow traffic")
        return self._applied(await self.store.set_shadows(model, change.shadows, _who(scope), change.reason))

    async def _ramp(self, model: str, raw: bytes, scope: Scope) -> dict[str, Any]:
        change = _parse(RampChange, raw)
        plan = change.model_dump(exclude={"reason"})
        try:
            parsed = RampPlan.parse(plan)
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
        current = await self._current()
        if model in current.models:
            base = current.models[model].weights
        else:  # no split yet: ramp away from what unpinned requests get now, or the newest other ready version
            ready = [v.version for v in self.plane.catalog.model_versions(model).values()
                     if v.ready and v.version != parsed.version]
            if not ready:
                raise GatewayError(Code.INVALID_ARGUMENT, f"model '{model}' has no other ready version to ramp "
                                   f"version '{parsed.version}' up from")
            default = self.plane.catalog.default_version(model).version
            base = {default if default != parsed.version else ready[-1]: 100}
            plan["base"] = base
        try:
            first = ModelSplit(weights=split_with(base, parsed.version, parsed.steps[0]))
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
        await self._check(current.model_copy(update={"models": {**current.models, model: first}}), model)
        return self._applied(await self.store.start_ramp(model, plan, _who(scope), change.reason))


def _parse(kind: type[M], raw: bytes) -> M:
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise GatewayError(Code.INVALID_ARGUMENT, detail) from None


def _who(scope: Scope) -> str:
    return dict(scope["headers"]).get(b"x-operator", b"").decode(errors="replace")[:200] or _peer(scope)


MAX_BODY_BYTES = 1 << 20


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"

