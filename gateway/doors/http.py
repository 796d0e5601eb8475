"""The HTTP door: Open Inference Protocol REST as a plain ASGI app (served by uvicorn).

Speaks JSON tensors and the binary tensor data extension (`Inference-Header-Content-Length`,
`binary_data_size`, `binary_data_output`) that tritonclient.http uses by default. Converts
once at the edge, calls the data plane once, and maps a GatewayError to its HTTP status here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import orjson

from gateway import codec
from gateway.core import DataPlane
from gateway.doors import http_extensions as ext
from gateway.doors.asgi import client_address, read_body
from gateway.doors.http_schema import IndexBody, InferBody, binary_size, parse_json
from gateway.errors import Code, GatewayError, invalid, not_found
from gateway.feedback import MAX_BODY_BYTES as FEEDBACK_MAX_BYTES
from gateway.feedback import FeedbackLog, parse_body
from gateway.telemetry.tracing import parse_traceparent
from gateway.types import InferRequest, InferResponse, RequestedOutput, Tensor

log = logging.getLogger(__name__)

Scope = dict[str, Any]
JSON = [(b"content-type", b"application/json")]
HEADER_LENGTH = b"inference-header-content-length"


class HttpError(GatewayError):
    """A fault of the HTTP layer itself (route, method), outside the error table's codes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT if status < 500 else Code.INTERNAL, message)
        self.status = status

    @property
    def http_status(self) -> int:
        return self.status


class HttpDoor:
    def __init__(
        self,
        plane: DataPlane,
        *,
        max_body_bytes: int,
        max_elements: int,
        default_timeout_s: float,
        routing_header: str = "x-routing-key",
        feedback: FeedbackLog | None = None,
        max_rows: int = 65536,
        key_header: str = "x-api-key",
        priority_header: str = "x-priority",
        admin_token: str = "",
    ) -> None:
        self.plane = plane
        self.key_header = key_header.lower().encode()
        self.priority_header = priority_header.lower().encode()
        self.admin_token = admin_token
        self.feedback = feedback
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.max_elements = max_elements
        self.default_timeout_s = default_timeout_s
        self.routing_header = routing_header.lower().encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._route(scope, receive)
        except GatewayError as exc:
            status, body = exc.http_status, orjson.dumps({"error": exc.message})
            headers = list(JSON)
            if exc.retry_after_s is not None:
                headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
            if exc.traceparent:
                headers.append((b"traceparent", exc.traceparent.encode()))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            status, headers, body = 500, list(JSON), orjson.dumps({"error": "internal error in the gateway"})
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if not parts or parts[0] != "v2":
            raise HttpError(404, f"no route for {scope['path']}; the API lives under /v2")
        rest = parts[1:]
        if rest == []:
            self._method(method, "GET")
            name, server_version, extensions = self.plane.server_metadata()
            return _json({"name": name, "version": server_version, "extensions": list(extensions)})
        if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            self._method(method, "GET")
            ok = self.plane.server_live() if rest[1] == "live" else self.plane.server_ready()
            return _json({rest[1]: ok}, 200 if ok else 503)
        if rest == ["repository", "index"]:
            self._method(method, "POST")
            body = await self._body(scope, receive)
            ready = parse_json(IndexBody, body).ready if body.strip() else False
            return _json(
                [
                    {"name": s.model, "version": s.version, "state": s.state, "reason": s.reason}
                    for s in self.plane.repository_index(ready)
                ]
            )
        if rest == ["models", "stats"]:
            self._method(method, "GET")
            return _json(ext.statistics_json(self.plane.model_statistics()))
        if rest[0] in ("systemsharedmemory", "cudasharedmemory"):
            self._method(method, "GET" if rest[-1] == "status" else "POST")  # before anything is changed
            body = await self._body(scope, receive) if method == "POST" else b""
            kind = "system" if rest[0] == "systemsharedmemory" else "cuda"
            return _json(ext.shared_memory(self.plane, kind, rest[1:], body, client_address(scope)))
        if len(rest) == 4 and rest[:2] == ["repository", "models"] and rest[3] in ("load", "unload"):
            self._method(method, "POST")
            ext.require_admin(scope["headers"], self.admin_token)
            await self._body(scope, receive)  # Triton's parameters (config overrides): none apply here
            if rest[3] == "load":
                await self.plane.load_model(rest[2])
            else:
                await self.plane.unload_model(rest[2])
            return _json({})
        if rest[0] == "models" and len(rest) >= 2:
            model, tail = rest[1], rest[2:]
            version: str | None = None
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            if tail == []:
                self._method(method, "GET")
                return _json(self._metadata(model, version))
            if tail == ["config"]:
                self._method(method, "GET")
                return _json(ext.config_json(self.plane.model_config(model, version)))
            if tail == ["stats"]:
                self._method(method, "GET")
                return _json(ext.statistics_json(self.plane.model_statistics(model, version)))
            if tail == ["ready"]:
                self._method(method, "GET")
                ready = self.plane.model_ready(model, version)
                return _json({"name": model, "ready": ready}, 200 if ready else 503)
            if tail == ["infer"]:
                self._method(method, "POST")
                return await self._infer(scope, receive, model, version)
            if tail == ["feedback"]:
                self._method(method, "POST")
                return await self._feedback(scope, receive, model, version)
        raise HttpError(404, f"no route for {scope['path']}")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"use {allowed} for this path")

    def _metadata(self, model: str, version: str | None) -> dict[str, Any]:
        md = self.plane.model_metadata(model, version)
        return {
            "name": md.name,
            "versions": list(md.versions),
            "platform": md.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.outputs],
        }

    async def _body(self, scope: Scope, receive: Any, limit: int | None = None) -> bytes:
        return await read_body(scope, receive, self.max_body_bytes if limit is None else limit)

    async def _feedback(
        self, scope: Scope, receive: Any, model: str, version: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if version is not None:
            raise not_found(f"feedback is keyed by request id, not version: POST it to /v2/models/{model}/feedback")
        self.plane.require_model(model)  # NOT_FOUND for a model this gateway does not serve
        if self.feedback is None:
            raise GatewayError(
                Code.UNIMPLEMENTED,
                "feedback is off: it is written beside the request log; set request_log.enabled to accept it",
            )
        items = parse_body(await self._body(scope, receive, min(self.max_body_bytes, FEEDBACK_MAX_BYTES)))
        accepted = await self.feedback.submit(model, items, client_address(scope), "http")
        return _json({"model": model, "accepted": accepted})

    async def _infer(
        self, scope: Scope, receive: Any, model: str, version: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        received = time.monotonic()
        body = await self._body(scope, receive)
        header_len: int | None = None
        routing_key: str | None = None
        traceparent = tracestate = api_key = priority = ""
        timeout_s = self.default_timeout_s
        for key, value in scope["headers"]:
            if key == HEADER_LENGTH:
                if not value.isdigit() or int(value) > len(body):
                    raise invalid("Inference-Header-Content-Length must be an integer no larger than the body")
                header_len = int(value)
            elif key == self.routing_header:
                routing_key = value.decode("latin-1")
            elif key == b"x-timeout-ms":
                try:
                    timeout_s = min(timeout_s, float(value) / 1000.0)
                except ValueError:
                    raise invalid("x-timeout-ms must be a number of milliseconds") from None
            elif key == b"traceparent":
                traceparent = parse_traceparent(value.decode("latin-1"))  # "" when malformed: ignored
            elif key == b"tracestate":
                tracestate = value.decode("latin-1")
            elif key == self.key_header:
                api_key = value.decode("latin-1")
            elif key == self.priority_header:
                priority = value.decode("latin-1")
        view = memoryview(body)
        parsed: InferBody = parse_json(InferBody, view[:header_len] if header_len is not None else body)
        binary = view[header_len:] if header_len is not None else view[len(body) :]
        self.plane.check_rows(model, version, ((i.name, i.shape) for i in parsed.inputs), self.max_rows)
        request = self._decode(
            parsed,
            binary,
            model,
            version,
            received,
            received + timeout_s,
            routing_key,
            client_address(scope),
            traceparent,
            tracestate,
            api_key,
            priority,
        )
        if request.outputs:
            self.plane.shm_check_outputs(request.outputs)
        return self._encode(await self.plane.infer(request), parsed, request.outputs)

    def _decode(
        self,
        body: InferBody,
        binary: memoryview,
        model: str,
        version: str | None,
        received: float,
        deadline: float,
        routing_key: str | None,
        client: str = "",
        traceparent: str = "",
        tracestate: str = "",
        api_key: str = "",
        priority: str = "",
    ) -> InferRequest:
        offset = 0
        inputs = []
        for inp in body.inputs:
            size = binary_size(inp.name, inp.parameters)
            target = ext.shm_target(inp.name, inp.parameters) if inp.parameters else None
            if target is not None:
                data = self.plane.shm_read(inp.name, *target)
                arr = codec.from_raw(inp.name, inp.datatype, inp.shape, data, self.max_elements)
            elif size is not None:
                if offset + size > len(binary):
                    raise invalid(f"input '{inp.name}': binary_data_size {size} runs past the end of the body")
                arr = codec.from_raw(
                    inp.name, inp.datatype, inp.shape, binary[offset : offset + size], self.max_elements
                )
                offset += size
            else:
                if inp.data is None:
                    raise invalid(f"input '{inp.name}' has neither 'data' nor parameters.binary_data_size")
                arr = codec.from_list(inp.name, inp.datatype, inp.shape, inp.data, self.max_elements)
            inputs.append(Tensor(inp.name, inp.datatype, arr))
        if offset != len(binary):
            raise invalid(f"the body holds {len(binary) - offset} bytes of binary data that no input claims")
        outputs = tuple(
            RequestedOutput(
                o.name,
                _flag(o.parameters, "binary_data"),
                ext.shm_target(o.name, o.parameters) if o.parameters else None,
            )
            for o in body.outputs
        )
        return InferRequest(
            model=model,
            version=version,
            id=body.id,
            inputs=tuple(inputs),
            outputs=outputs,
            parameters=body.parameters,
            routing_key=routing_key,
            deadline=deadline,
            received_at=received,
            client=client,
            protocol="http",
            traceparent=traceparent,
            tracestate=tracestate,
            api_key=api_key,
            priority=priority,
        )

    def _encode(
        self, resp: InferResponse, body: InferBody, requested: tuple[RequestedOutput, ...] = ()
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        binary_default = bool(_flag(body.parameters, "binary_data_output"))
        choice = {o.name: _flag(o.parameters, "binary_data") for o in body.outputs}
        shm = {o.name: o for o in requested if o.shm is not None}
        outputs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for t in resp.outputs:
            entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
            wanted = choice.get(t.name)
            if t.name in shm:
                entry["parameters"] = ext.write_shm_output(self.plane, shm[t.name], codec.to_raw(t.data, t.datatype))
            elif wanted if wanted is not None else binary_default:
                raw = codec.to_raw(t.data, t.datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = _json_data(t)
            outputs.append(entry)
        payload: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version, "outputs": outputs}
        if resp.id:
            payload["id"] = resp.id
        header = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        version_header = (b"x-model-version", resp.version.encode())
        if not blobs:
            headers, body_out = [*JSON, version_header], header
        else:
            headers = [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH, str(len(header)).encode()),
                version_header,
            ]
            body_out = header + b"".join(blobs)
        if resp.traceparent:  # only when tracing is on
            headers.append((b"traceparent", resp.traceparent.encode()))
        return 200, headers, body_out


def _json_data(t: Tensor) -> Any:
    if t.datatype in ("BYTES", "FP16"):
        return codec.to_list(t.data, t.datatype)
    return np.ascontiguousarray(t.data).ravel()  # orjson writes it natively


def _flag(params: dict[str, Any], key: str) -> bool | None:
    value = params.get(key)
    return value if isinstance(value, bool) else None


def _json(payload: Any, status: int = 200) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, list(JSON), orjson.dumps(payload)
