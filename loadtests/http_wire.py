"""HTTP/1.1 response framing for the load client: status line, body length, keep-alive."""

from __future__ import annotations

from dataclasses import dataclass


class BadResponse(ValueError):
    """The server sent bytes that are not an HTTP/1.1 response."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    head_length: int  # bytes up to and including the blank line
    content_length: int | None
    chunked: bool
    close: bool  # the server will not take another request on this socket
    json_length: int | None  # Inference-Header-Content-Length (binary tensor extension)


def parse_head(buffer: bytearray) -> ResponseHead | None:
    """The response head if the buffer holds all of it, else None (wait for more bytes)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise BadResponse(f"bad status line {lines[0][:80]!r}")
    try:
        return _parse_fields(lines, parts, end)
    except ValueError as exc:
        raise BadResponse(str(exc)) from exc


def _parse_fields(lines: list[bytes], parts: list[bytes], end: int) -> ResponseHead:
    status = int(parts[1])
    content_length: int | None = None
    json_length: int | None = None
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            content_length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            token = value.strip().lower()
            close = token == b"close" or (close and token != b"keep-alive")
        elif key == b"inference-header-content-length":
            json_length = int(value)
    if status in (204, 304) or 100 <= status < 200:
        content_length = 0
    elif content_length is None and not chunked:
        # Body delimited by connection close: we do not read it, so the socket is spent.
        content_length, close = 0, True
    return ResponseHead(status, end + 4, content_length, chunked, close, json_length)


def read_body(buffer: bytearray, head: ResponseHead) -> tuple[bytes, int] | None:
    """(body, bytes consumed from the buffer start) once the body is complete, else None."""
    if not head.chunked:
        assert head.content_length is not None
        used = head.head_length + head.content_length
        if len(buffer) < used:
            return None
        return bytes(buffer[head.head_length : used]), used
    return _read_chunked(buffer, head.head_length)


def _read_chunked(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    pieces: list[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            # Optional trailers, then an empty line.
            if buffer[pos : pos + 2] == b"\r\n":
                return b"".join(pieces), pos + 2
            trailer_end = buffer.find(b"\r\n\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(pieces), trailer_end + 4
        if len(buffer) < pos + size + 2:
            return None
        pieces.append(bytes(buffer[pos : pos + size]))
        pos += size + 2
