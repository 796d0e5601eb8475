"""Feedback: ground-truth labels that clients post back for answered requests, keyed by request id.

`POST /v2/models/{model}/feedback` (docs/RETRAINING.md) lands here: the body is validated, and each
label becomes one `kind: "feedback"` record under `<request_log.dir>/feedback/`, written by the request
log's own writer (same durability, back-pressure and rotation), before the answer leaves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictStr, ValidationError, model_validator

from contract.request_log.feedback import FEEDBACK_DIR, KIND, feedback_root, latest_labels, read_feedback
from gateway.errors import GatewayError, invalid
from gateway.request_log.record import FORMAT_VERSION, RecordEncoder
from gateway.request_log.settings import RequestLogSettings
from gateway.request_log.writer import RequestLogWriter

__all__ = [
    "FEEDBACK_DIR",
    "KIND",
    "MAX_BODY_BYTES",
    "FeedbackItem",
    "FeedbackLog",
    "feedback_root",
    "latest_labels",
    "parse_body",
    "read_feedback",
]

MAX_BODY_BYTES = 1 << 20
MAX_ITEMS = 1000
MAX_LABEL_VALUES = 4096
MAX_REQUEST_ID_CHARS = 256

LabelValue = int | float | list[int | float]


def _check_label(v: Any) -> LabelValue:
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    if number(v):
        return v  # type: ignore[no-any-return]
    if isinstance(v, list) and all(number(x) for x in v):
        if not 1 <= len(v) <= MAX_LABEL_VALUES:
            raise ValueError(f"a label list holds 1 to {MAX_LABEL_VALUES} numbers")
        return v
    raise ValueError("a label is a number (a class index or a target value) or a flat list of numbers")


Label = Annotated[Any, PlainValidator(_check_label)]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    label: Label


class FeedbackBody(BaseModel):
    """Either one label (`request_id`, `label`) or a batch (`items: [{request_id, label}, ...]`)."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    label: Label | None = None
    items: list[FeedbackItem] | None = Field(None, min_length=1, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _one_form(self) -> FeedbackBody:
        single = self.request_id is not None or self.label is not None
        if self.items is not None and single:
            raise ValueError("send either 'request_id' and 'label', or 'items', not both")
        if self.items is None and (self.request_id is None or self.label is None):
            raise ValueError("send 'request_id' and 'label' (or a batch as 'items': [{request_id, label}, ...])")
        if self.items is None:
            FeedbackItem(request_id=self.request_id, label=self.label)  # the same checks as a batch item
        return self

    def all_items(self) -> list[FeedbackItem]:
        if self.items is not None:
            return self.items
        assert self.request_id is not None and self.label is not None
        return [FeedbackItem(request_id=self.request_id, label=self.label)]


def parse_body(raw: bytes) -> list[FeedbackItem]:
    """The items of a feedback body; any fault is INVALID_ARGUMENT with the field and what is wrong."""
    try:
        return FeedbackBody.model_validate_json(raw).all_items()
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise invalid(f"feedback body is not valid JSON: {first['msg']}") from None
        msg = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first["loc"])
        raise invalid(f"feedback body field '{where}': {msg}" if where else f"feedback body: {msg}") from None


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    request_id: str
    time: float  # unix seconds when the gateway received the label
    model: str
    label: LabelValue
    client: str
    protocol: str

    @property
    def code(self) -> str:
        return "OK"  # the writer's sampler keeps every record whose code is not OK; feedback is never sampled


class FeedbackEncoder(RecordEncoder):
    """One feedback record as one JSON line (docs/REQUEST_LOG.md, "Feedback records")."""

    def encode(self, r: Any) -> tuple[bytes, bool]:
        line = orjson.dumps(
            {
                "format_version": FORMAT_VERSION,
                "kind": KIND,
                "gateway_id": self.gateway_id,
                "request_id": r.request_id,
                "time": r.time,
                "model": r.model,
                "label": r.label,
                "client": r.client,
                "protocol": r.protocol,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        return line, False


class _FeedbackWriter(RequestLogWriter):
    """The request log's group-committing writer with the feedback encoder in place of the request one."""

    def __init__(self, settings: RequestLogSettings) -> None:
        # A registry of its own: the request log's metric names are taken on the gateway's registry.
        super().__init__(settings, CollectorRegistry())
        self._encoder = FeedbackEncoder(self._sink.gateway_id, None, settings.max_record_bytes)


def feedback_settings(settings: RequestLogSettings) -> RequestLogSettings:
    """The request log's settings for the feedback stream: its own folder, nothing sampled or redacted."""
    return settings.model_copy(update={"dir": settings.dir / FEEDBACK_DIR, "sample": {}, "redact_inputs": {}})


class FeedbackLog:
    def __init__(self, settings: RequestLogSettings, registry: CollectorRegistry | None = None) -> None:
        if settings.gateway_id == FEEDBACK_DIR:
            raise ValueError(f"request_log.gateway_id '{FEEDBACK_DIR}' is taken by the feedback folder; choose another")
        self.settings = feedback_settings(settings)
        self.writer = _FeedbackWriter(self.settings)
        self.records = Counter(
            "gateway_feedback_records",
            "Ground-truth labels posted back, by outcome",
            ["model", "code"],
            registry=registry or CollectorRegistry(),
        )

    def start(self) -> FeedbackLog:
        self.writer.start()
        return self

    @property
    def healthy(self) -> bool:
        return self.writer.healthy

    async def submit(self, model: str, items: list[FeedbackItem], client: str = "", protocol: str = "http") -> int:
        """Writes one record per item; returns once all are as durable as the request log's durability promises.

        On UNAVAILABLE some items may be written already: retrying the whole batch is safe, since readers
        take the newest label of a request id."""
        now = time.time()
        records = [FeedbackRecord(i.request_id, now, model, i.label, client, protocol) for i in items]
        limit = self.settings.max_record_bytes - 1024  # room for the record's other keys
        for r in records:
            if len(orjson.dumps(r.label)) > limit:
                raise invalid(
                    f"the label for request '{r.request_id}' is over the record size limit "
                    f"of {self.settings.max_record_bytes} bytes (request_log.max_record_bytes)"
                )
        # The writer only hands a record to its encoder and reads .model and .code: a FeedbackRecord has both.
        appends = [self.writer.append(r) for r in records]  # type: ignore[arg-type]
        try:
            await asyncio.gather(*appends)
        except GatewayError as exc:
            self.records.labels(model, exc.code.name).inc(len(records))
            raise
        self.records.labels(model, "OK").inc(len(records))
        return len(records)

    async def close(self) -> None:
        await self.writer.close()
