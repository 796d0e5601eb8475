"""The admin API (own port, bearer token on every call): operators read and change the traffic table.

    GET  /admin/traffic                     the whole table
    GET  /admin/traffic/{model}             one model: weights, shadows, running ramp
    PUT  /admin/traffic/{model}             {"weights": {"1": 90, "2": 10}, "reason": ...}
    PUT  /admin/traffic/{model}/shadows     {"shadows": {"3": 0.2}}   ({} stops shadowing)
    POST /admin/traffic/{model}/ramp        {"version", "steps", "every_s", "max_error_rate", "max_p99_ms", ...}
    POST /admin/traffic/{model}/promote     {"version": "2"}
    POST /admin/traffic/{model}/rollback    {} (ends a ramp at its starting split, or undoes the last change)
    GET  /admin/traffic/{model}/history     every change: who, when, before, after, why
    POST /admin/experiments/{model}         {"arms": {"1": 50, "2": 50}, "metric": "accuracy", ...} starts one
    GET  /admin/experiments/{model}         the latest experiment: per arm n, metric, interval, lift, guardrails
    POST /admin/experiments/{model}/stop    {} ends it; control takes all traffic back
    GET    /admin/tenants                   every tenant's limits and key count (never keys or hashes)
    POST   /admin/tenants/{name}            {"requests_per_s", "rows_per_s", "burst_s", "max_inflight", "priority"}
                                            a new tenant; the answer holds its new key, shown this once
    POST   /admin/tenants/{name}/rotate     {"keep_old": false}: a new key; old keys stop working unless kept
    PUT    /admin/tenants/{name}/limits     the limits to change (null: unlimited)
    DELETE /admin/tenants/{name}

Tenant changes are written to the tenant file, which every gateway process follows (gateway/tenants/gate.py).
A traffic change is validated against this gateway's versions (weights, versions exist and are ready) before
it is stored in the cluster's table; every gateway then follows the table (gateway/traffic/control.py).
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.doors.asgi import client_address, read_body
from gateway.errors import Code, GatewayError, parse_json
from gateway.tenants.gate import ROUTES, Action, Tenants, check_name, operate

Scope = dict[str, Any]
JSON = [(b"content-type", b"application/json")]


class Traffic(Protocol):
    """The traffic operations the admin API offers (gateway.traffic.control.TrafficControl): each change is
    checked against this gateway's versions, stored in the cluster's table, and applied here."""

    async def table(self) -> dict[str, Any]: ...

    async def model_view(self, model: str) -> dict[str, Any]: ...

    async def history(self, model: str) -> list[dict[str, Any]]: ...

    async def set_split(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]: ...

    async def promote(self, model: str, version: str, who: str, reason: str) -> dict[str, Any]: ...

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]: ...

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]: ...

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]: ...

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]: ...

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]: ...

    async def experiment(self, model: str) -> dict[str, Any]: ...


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


class ExperimentChange(_Change):
    """An experiment plan (contract/experiments/plan.py checks the values; docs/EXPERIMENTS.md explains them)."""

    arms: dict[str, int]
    metric: str
    control: str | None = None
    output: str | None = None
    higher_is_better: bool | None = None
    mde: float | None = Field(None, gt=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    min_samples: int = Field(100, ge=2)
    max_samples: int | None = Field(None, ge=2)
    max_duration_s: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(0.05, ge=0, le=1)
    max_p99_ms: float | None = Field(None, gt=0)
    min_requests: int = Field(20, ge=1)
    guard_metric: str | None = None
    guard_margin: float = Field(0.0, ge=0)
    allocation: str = "fixed"
    min_share: int = Field(10, ge=1, le=50)


class AdminApi:
    def __init__(self, traffic: Traffic, token: str, tenants: Tenants | None = None) -> None:
        if not token:
            raise ValueError("the admin API needs a token")
        self.traffic = traffic
        self.tenants = tenants
        self._token = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, payload = await self._handle(scope, receive)
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Any) -> tuple[int, Any]:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(auth, self._token):  # constant time: no guessing the token byte by byte
            return 401, {"error": "missing or wrong bearer token (Authorization: Bearer <admin_token>)"}
        parts = scope["path"].strip("/").split("/")
        method = scope["method"]
        if parts[:2] == ["admin", "experiments"] and len(parts) in (3, 4):
            return await self._experiments(scope, receive, parts[2], parts[3] if len(parts) == 4 else None)
        if parts[:2] == ["admin", "tenants"] and len(parts) <= 4:
            try:
                return await self._tenants(scope, receive, method, parts[2:])
            except GatewayError as exc:
                return exc.http_status, {"error": exc.message}
        if parts[:2] != ["admin", "traffic"] or len(parts) > 4:
            return 404, {"error": f"no admin route {method} {scope['path']}"}
        model, action = [*parts, None, None][2:4]
        traffic = self.traffic
        try:
            if model is None and method == "GET":
                return 200, await traffic.table()
            if model is None:
                return 404, {"error": f"no admin route {method} {scope['path']}"}
            if action is None and method == "GET":
                return 200, await traffic.model_view(model)
            if action == "history" and method == "GET":
                return 200, await traffic.history(model)
            if method not in ("PUT", "POST"):
                return 404, {"error": f"no admin route {method} {scope['path']}"}
            body = await read_body(scope, receive, MAX_BODY_BYTES)
            who = _who(scope)
            if action is None and method == "PUT":
                split = parse_json(SplitChange, body)
                return 200, await traffic.set_split(model, split.weights, who, split.reason)
            if action == "shadows" and method == "PUT":
                shadows = parse_json(ShadowChange, body)
                return 200, await traffic.set_shadows(model, shadows.shadows, who, shadows.reason)
            if action == "ramp" and method == "POST":
                ramp = parse_json(RampChange, body)
                return 200, await traffic.start_ramp(model, ramp.model_dump(exclude={"reason"}), who, ramp.reason)
            if action == "promote" and method == "POST":
                promote = parse_json(PromoteChange, body)
                return 200, await traffic.promote(model, promote.version, who, promote.reason)
            if action == "rollback" and method == "POST":
                change = parse_json(_Change, body or b"{}")
                return 200, await traffic.rollback(model, who, change.reason)
        except GatewayError as exc:
            return exc.http_status, {"error": exc.message}
        return 404, {"error": f"no admin route {method} {scope['path']}"}

    async def _experiments(self, scope: Scope, receive: Any, model: str, action: str | None) -> tuple[int, Any]:
        method = scope["method"]
        try:
            if action is None and method == "GET":
                return 200, await self.traffic.experiment(model)
            if action is None and method == "POST":
                change = parse_json(ExperimentChange, await read_body(scope, receive, MAX_BODY_BYTES))
                plan = change.model_dump(exclude={"reason"}, exclude_unset=True)
                return 200, await self.traffic.start_experiment(model, plan, _who(scope), change.reason)
            if action == "stop" and method == "POST":
                stop = parse_json(_Change, await read_body(scope, receive, MAX_BODY_BYTES) or b"{}")
                return 200, await self.traffic.stop_experiment(model, _who(scope), stop.reason)
        except GatewayError as exc:
            return exc.http_status, {"error": exc.message}
        return 404, {"error": f"no admin route {method} {scope['path']}"}

    async def _tenants(self, scope: Scope, receive: Any, method: str, rest: list[str]) -> tuple[int, Any]:
        tenants = self.tenants
        if tenants is None:
            raise GatewayError(Code.FAILED_PRECONDITION, "tenants are off; set tenants.enabled to manage API keys")
        if not rest and method == "GET":
            return 200, await operate(tenants, "list")
        if not rest:
            return 404, {"error": f"no admin route {method} {scope['path']}"}
        name = check_name(rest[0])
        action = TENANT_ROUTES.get((method, rest[1] if len(rest) > 1 else None))
        if action is None:
            return 404, {"error": f"no admin route {method} {scope['path']}"}
        body = await read_body(scope, receive, MAX_BODY_BYTES) if method in ("POST", "PUT") else b""
        return 200, await operate(tenants, action, name, body)


TENANT_ROUTES: dict[tuple[str, str | None], Action] = {
    (method, suffix.lstrip("/") or None): action for action, (method, suffix) in ROUTES.items() if action != "list"
}
"""/admin/tenants/{name}[/{suffix}] by method: the tenant operation (gateway.tenants.gate.operate) it runs."""


def _who(scope: Scope) -> str:
    operator = dict(scope["headers"]).get(b"x-operator", b"").decode(errors="replace")[:200]
    return operator or client_address(scope, "unknown")


MAX_BODY_BYTES = 1 << 20
