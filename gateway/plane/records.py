"""The one place a request log record is made, for answered requests (core.py) and shadow copies alike."""

from __future__ import annotations

import time

from gateway.errors import GatewayError
from gateway.types import InferRequest, RequestRecord, Tensor, Timing


def request_record(
    request: InferRequest,
    request_id: str,
    *,
    model: str,
    version: str,
    role: str,
    reason: str,
    outputs: tuple[Tensor, ...],
    error: GatewayError | None,
    timing: Timing,
    total_s: float,
    trace_id: str,
    tenant: str = "",
    priority: str = "",
) -> RequestRecord:
    """`total_s` is the time since the request (or copy) arrived; the record's time is that arrival."""
    return RequestRecord(
        request_id=request_id,
        time=time.time() - total_s,
        model=model,
        version=version,
        role=role,
        routing_reason=reason,
        inputs=request.inputs,
        outputs=outputs,
        code=error.code.name if error is not None else "OK",
        error=error.message if error is not None else "",
        queue_ms=timing.queue_s * 1000.0,
        model_ms=timing.model_s * 1000.0,
        total_ms=total_s * 1000.0,
        batch_rows=timing.batch_rows,
        client=request.client,
        protocol=request.protocol,
        trace_id=trace_id,
        tenant=tenant,
        priority=priority,
    )
