"""The feedback stream's read side: ground-truth labels posted back by clients, stored beside the request log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contract.request_log.reader import RequestLogReader

FEEDBACK_DIR = "feedback"
"""Feedback records live in <request_log.dir>/feedback/<gateway_id>/, apart from request records."""
# Every feedback record has kind "feedback" (request log records have none).
KIND = "feedback"


def feedback_root(request_log_dir: Path | str) -> Path:
    return Path(request_log_dir) / FEEDBACK_DIR


def read_feedback(request_log_dir: Path | str, model: str | None = None) -> Iterator[dict[str, Any]]:
    """Every feedback record under a request log root (optionally of one model), in each gateway's write order."""
    for record in RequestLogReader(feedback_root(request_log_dir)):
        if record.get("kind") == KIND and (model is None or record.get("model") == model):
            yield record


def latest_labels(records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """request_id -> its newest feedback record (by time; a later write wins a tie)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        rid = str(r["request_id"])
        if rid not in out or float(r["time"]) >= float(out[rid]["time"]):
            out[rid] = r
    return out
