"""Prometheus metrics of the sidecar, on its own port. Labels are bounded: model, version, feature (the
features of a model's signature), statistic, and small fixed sets (outcome, reason)."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from gateway.drift.reference import FeatureScore


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.score = Gauge(
            "gateway_drift_score",
            "Drift statistic of the last closed window",
            ["model", "version", "feature", "statistic"],
            registry=r,
        )
        self.window = Gauge(
            "gateway_drift_window", "Number of the last closed window", ["model", "version"], registry=r
        )
        self.window_rows = Gauge(
            "gateway_drift_window_rows", "Rows in the last closed window", ["model", "version"], registry=r
        )
        self.breaching = Gauge(
            "gateway_drift_breaching_features",
            "Input features over a threshold in the last closed window",
            ["model", "version"],
            registry=r,
        )
        self.alarm_state = Gauge(
            "gateway_drift_breach_streak", "Breaching windows in a row", ["model", "version"], registry=r
        )
        self.alarms = Counter("gateway_drift_alarms", "Drift alarms raised", ["model", "version"], registry=r)
        self.jobs = Counter(
            "gateway_drift_retrain_jobs",
            "Retraining job submissions by outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.records = Counter(
            "gateway_drift_records", "Request-log records read, by what became of them", ["outcome"], registry=r
        )
        self.lost_segments = Gauge(
            "gateway_drift_lost_segments", "Log segments deleted by retention before the sidecar read them", registry=r
        )

    def serve(self, host: str, port: int) -> int:
        """Starts the HTTP endpoint in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    def window_closed(
        self, model: str, version: str, window: int, rows: int, features: list[FeatureScore], verdict: dict[str, Any]
    ) -> None:
        for f in features:
            for stat, value in f.scores.items():
                self.score.labels(model, version, f.feature, stat).set(value if not math.isnan(value) else math.nan)
        self.window.labels(model, version).set(window)
        self.window_rows.labels(model, version).set(rows)
        self.breaching.labels(model, version).set(len(verdict["breaching"]))
        self.alarm_state.labels(model, version).set(verdict["streak"])
