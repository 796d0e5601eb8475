"""The writer's counters, as a plain dict (`stats()`) and as Prometheus metrics on a registry passed in.

Never a silent loss: every record is counted as written, dropped (with a reason) or rejected (answered 503).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

DROP_REASONS = ("queue_full", "io_error", "closed")


class LogStats:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry or CollectorRegistry()
        # The event loop and the writer thread both count; `+=` on an int is not atomic across threads.
        self._lock = threading.Lock()
        self.written = self.bytes = self.rejected = self.sampled_out = self.truncated = self.batches = 0
        self.segments_closed = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._written = Counter("gateway_request_log_records_written", "Records written to the request log", registry=r)
        self._bytes = Counter("gateway_request_log_bytes_written", "Bytes written to the request log", registry=r)
        self._dropped = Counter(
            "gateway_request_log_records_dropped",
            "Records not logged although their request was answered, by reason",
            ["reason"],
            registry=r,
        )
        self._rejected = Counter(
            "gateway_request_log_records_rejected",
            "Requests answered UNAVAILABLE because their record could not be logged",
            registry=r,
        )
        self.queue_gauge = Gauge(
            "gateway_request_log_queue_depth",
            "Records accepted but not yet written",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.healthy_gauge = Gauge(
            "gateway_request_log_healthy",
            "1 while the request log's directory is writable",
            registry=r,
            multiprocess_mode="livemin",
        )
        self._dropped_children = {reason: self._dropped.labels(reason) for reason in DROP_REASONS}
        self.healthy_gauge.set(1)

    def add_written(self, records: int, nbytes: int, truncated: int) -> None:
        with self._lock:
            self.written += records
            self.bytes += nbytes
            self.truncated += truncated
            self.batches += 1
        self._written.inc(records)
        self._bytes.inc(nbytes)

    def add_dropped(self, reason: str, records: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += records
        self._dropped_children[reason].inc(records)

    def add_rejected(self, records: int = 1) -> None:
        with self._lock:
            self.rejected += records
        self._rejected.inc(records)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "written": self.written,
                "bytes": self.bytes,
                "dropped": dict(self.dropped),
                "rejected": self.rejected,
                "sampled_out": self.sampled_out,
                "truncated": self.truncated,
                "batches": self.batches,
                "segments_closed": self.segments_closed,
            }
