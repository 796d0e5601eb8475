"""One error vocabulary for both doors: google.rpc codes, each mapped once to an HTTP status.

Adapters translate a `GatewayError` at their boundary; nothing else picks status codes.
"""

from __future__ import annotations

import enum
import math
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class Code(enum.IntEnum):
    """google.rpc.Code values; gRPC status codes share these numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The only code -> HTTP status table. 499 is the de-facto "client closed request" status.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    # Oversized input; overload is UNAVAILABLE (503), not this.
    Code.RESOURCE_EXHAUSTED: 413,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class Refusal(enum.StrEnum):
    """Why a request was refused before it reached a model: the one label of refusal metrics, and the only
    thing besides the code that picks an HTTP status (RESOURCE_EXHAUSTED is 413 for oversized input but
    429 for a tenant over its rate or in-flight quota)."""

    UNAUTHENTICATED = "unauthenticated"  # missing or unknown API key
    RATE_LIMITED = "rate_limited"  # the tenant's requests/s or rows/s bucket is empty
    QUOTA = "quota"  # the tenant has its in-flight quota of requests at this model already
    QUEUE_FULL = "queue_full"  # the batch queue is full and nothing of a lower class could make room
    SHED = "shed"  # queued, then pushed out by a request of a higher class (or a fairer share)
    PREDICTED_MISS = "predicted_miss"  # the predicted answer time is past the request's deadline
    EXPIRED = "expired"  # its deadline passed while queued


# Refusals whose HTTP status is not their code's; gRPC uses the code alone.
HTTP_STATUS_FOR_REFUSAL: dict[Refusal, int] = {Refusal.RATE_LIMITED: 429, Refusal.QUOTA: 429}


class GatewayError(Exception):
    """A failure with a code the client sees and a message that tells them what to do."""

    traceparent: str = ""  # the failed request's server span (set on a per-request copy when tracing is on)

    def __init__(
        self, code: Code, message: str, *, retry_after_s: float | None = None, refusal: Refusal | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.refusal = refusal

    @property
    def http_status(self) -> int:
        if self.refusal is not None and self.refusal in HTTP_STATUS_FOR_REFUSAL:
            return HTTP_STATUS_FOR_REFUSAL[self.refusal]
        return HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.message!r})"


def as_gateway_error(exc: BaseException, what: str) -> GatewayError:
    """Any failure as the client sees it: our own errors pass through, others become INTERNAL (type only)."""
    if isinstance(exc, GatewayError):
        return exc
    return GatewayError(Code.INTERNAL, f"{what} failed: {type(exc).__name__}")


def invalid(message: str) -> GatewayError:
    return GatewayError(Code.INVALID_ARGUMENT, message)


def parse_json(kind: type[M], raw: bytes) -> M:
    """A JSON body as `kind`, or INVALID_ARGUMENT naming each bad field (the admin API's and its CLI's message)."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        raise GatewayError(Code.INVALID_ARGUMENT, field_errors(exc)) from None


def field_errors(exc: ValidationError, whole: str = "body") -> str:
    """A validation error on one line: 'where: what' for each bad field (`whole` for the whole document), without
    pydantic's "Value error, " before the messages of our own validators."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {str(e['msg']).removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def not_found(message: str) -> GatewayError:
    return GatewayError(Code.NOT_FOUND, message)


def unavailable(message: str, retry_after_s: float | None = 1.0) -> GatewayError:
    return GatewayError(Code.UNAVAILABLE, message, retry_after_s=retry_after_s)


def overloaded(what: str) -> GatewayError:
    return GatewayError(
        Code.UNAVAILABLE,
        f"{what} is overloaded: its queue is full; retry with backoff",
        retry_after_s=0.1,
        refusal=Refusal.QUEUE_FULL,
    )


def shed(what: str, priority: str) -> GatewayError:
    return GatewayError(
        Code.UNAVAILABLE,
        f"{what} is overloaded: this '{priority}' request made room for a request of a higher class or a "
        "tenant with a smaller share; retry with backoff",
        retry_after_s=0.5,
        refusal=Refusal.SHED,
    )


def predicted_miss(what: str, predicted_s: float, left_s: float) -> GatewayError:
    # DEADLINE_EXCEEDED, not UNAVAILABLE: it is the answer the request would have had, only sooner, and a
    # retry with the same deadline would meet the same queue (so no retry hint).
    when = f"in about {predicted_s * 1000:.0f} ms" if math.isfinite(predicted_s) else "only once higher classes ease"
    return GatewayError(
        Code.DEADLINE_EXCEEDED,
        f"{what} would answer {when}, past this request's deadline "
        f"({max(left_s, 0) * 1000:.0f} ms left); refused at once instead of queued. Allow a longer deadline, "
        "use a higher priority class, or retry when the model is less busy",
        refusal=Refusal.PREDICTED_MISS,
    )
