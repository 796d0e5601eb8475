"""gateway.telemetry.metrics: the request path's direct cell updates expose what prometheus_client's own calls would."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest

from gateway.telemetry.metrics import Metrics

# On bucket bounds, between them, below the first, past the last finite one, zero, +Inf and NaN (no bucket).
VALUES = [0.0, 0.0005, 0.0007, 0.001, 0.0031, 0.02, 0.049, 0.5, 9.99, 10.0, 10.5, 123.0, math.inf, math.nan]


def exposition(m: Metrics) -> list[str]:
    return [
        line
        for line in generate_latest(m.registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_request_cells_match_prometheus_observe() -> None:
    fast, slow = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for i, v in enumerate(VALUES):
        compute = v / 3 if i % 3 else 0.0
        fast.request("m", "1", "OK", v, queue_s=v / 2, compute_s=compute)
        slow.requests.labels("m", "1", "OK").inc()
        slow.latency.labels("m", "1").observe(v)
        if compute > 0:  # the batched path's split of the time (the unbatched path has none)
            slow.queue.labels("m", "1").observe(v / 2)
            slow.compute.labels("m", "1").observe(compute)
    for code in ("UNAVAILABLE", "UNAVAILABLE", "INVALID_ARGUMENT"):
        fast.request("m", "1", code, 0.2)
        slow.requests.labels("m", "1", code).inc()
    got, want = exposition(fast), exposition(slow)
    assert got == want
    # The comparison is not vacuous: buckets were filled, and a failure added no latency sample.
    assert 'gateway_inference_request_duration_seconds_bucket{le="0.001",model="m",version="1"} 4.0' in got
    assert 'gateway_inference_request_duration_seconds_count{model="m",version="1"} 13.0' in got
    assert 'gateway_inference_requests_total{code="UNAVAILABLE",model="m",version="1"} 2.0' in got
