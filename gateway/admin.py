"""The admin API (own port, bearer token on every call): operators read and change the traffic table.

A change is validated against this gateway's catalog (weights, versions exist and are ready) before
it is stored in the cluster's table; every gateway then follows the table (see app.follow_traffic).
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core import DataPlane
from gateway.errors import Code, GatewayError
from gateway.traffic import ModelSplit, TrafficTable

Scope = dict[str, Any]
JSON = [(b"content-type", b"application/json")]


class TrafficStore(Protocol):
    async def get(self) -> dict[str, Any]: ...

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]: ...

    async def history(self, model: str) -> list[dict[str, Any]]: ...


class SplitChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, int]
    reason: str = Field("", max_length=1000)


def table_from(stored: dict[str, Any]) -> TrafficTable:
    return TrafficTable(revision=int(stored["revision"]),
                        models={m: ModelSplit(weights=w) for m, w in stored["models"].items()})


class AdminApi:
    def __init__(self, plane: DataPlane, store: TrafficStore, token: str) -> None:
        if not token:
            raise ValueError("the admin API needs a token")
        self.plane = plane
        self.store = store
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
        try:
            if parts == ["admin", "traffic"] and method == "GET":
                return 200, await self.store.get()
            if len(parts) == 3 and parts[:2] == ["admin", "traffic"] and method == "GET":
                table = await self.store.get()
                return 200, {"model": parts[2], "weights": table["models"].get(parts[2]),
                             "revision": table["revision"]}
            if len(parts) == 3 and parts[:2] == ["admin", "traffic"] and method == "PUT":
                return 200, await self._set(parts[2], await _body(receive), scope)
            if len(parts) == 4 and parts[:2] == ["admin", "traffic"] and parts[3] == "history" and method == "GET":
                return 200, await self.store.history(parts[2])
        except GatewayError as exc:
            return exc.http_status, {"error": exc.message}
        return 404, {"error": f"no admin route {method} {scope['path']}"}

    async def _set(self, model: str, raw: bytes, scope: Scope) -> dict[str, Any]:
        try:
            change = SplitChange.model_validate_json(raw)
            split = ModelSplit(weights=change.weights)
        except ValidationError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, "; ".join(e["msg"] for e in exc.errors())) from None
        current = table_from(await self.store.get())
        candidate = TrafficTable(revision=current.revision, models={**current.models, model: split})
        self.plane.router.check(candidate)  # NOT_FOUND / INVALID_ARGUMENT; nothing stored on failure
        who = dict(scope["headers"]).get(b"x-operator", b"").decode() or _peer(scope)
        stored = await self.store.set_model(model, split.weights, who, change.reason)
        self.plane.router.apply(table_from(stored))
        return stored


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"

