"""What the HTTP door and the admin API share as ASGI apps on uvicorn: the request body read under a cap,
the httptools protocol with a cap on headers, and the client's address."""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import Code, GatewayError

Scope = dict[str, Any]


def client_address(scope: Scope, unknown: str = "") -> str:
    peer = scope.get("client")
    return f"{peer[0]}:{peer[1]}" if peer else unknown


class _HeadersTooLarge(Exception):
    pass


def limited_http_protocol(max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a cap on the request line plus headers (httptools has none).

    Counted as the parser hands over each piece, so an endless header is cut off at the cap instead of
    being buffered; the client gets 431 and the connection closes.
    """

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _too_large = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes:
                self._too_large = True
                raise _HeadersTooLarge  # the parser stops; data_received answers through send_400_response

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                super().send_400_response(msg)
                return
            body = orjson.dumps({"error": f"request line and headers are over the limit of {max_header_bytes} bytes"})
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json"
                b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

    return LimitedHttpToolsProtocol


async def read_body(scope: Scope, receive: Any, max_bytes: int) -> bytes:
    """An ASGI request body, refused with RESOURCE_EXHAUSTED past max_bytes before it is all read."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED, f"request body of {int(value)} bytes is over the limit of {max_bytes}"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(Code.CANCELLED, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise GatewayError(Code.RESOURCE_EXHAUSTED, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
