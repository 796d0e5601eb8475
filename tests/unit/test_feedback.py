"""The feedback endpoint and its stream: body validation, durable records apart from request records, HTTP answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from contract.manifest import Manifest, TensorSpecModel
from gateway.core import DataPlane
from gateway.doors.http import HttpDoor
from gateway.errors import Code, GatewayError
from gateway.feedback import FeedbackItem, FeedbackLog, latest_labels, parse_body, read_feedback
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.request_log import RequestLogReader, RequestLogSettings, RequestLogWriter
from gateway.settings import BatchingOverride
from gateway.types import RequestRecord

pytestmark = pytest.mark.asyncio
Arrays = dict[str, np.ndarray]


def invalid_message(raw: bytes) -> str:
    with pytest.raises(GatewayError) as info:
        parse_body(raw)
    assert info.value.code == Code.INVALID_ARGUMENT
    return info.value.message


async def test_single_and_batch_bodies_parse() -> None:
    assert parse_body(b'{"request_id": "a", "label": 1}') == [FeedbackItem(request_id="a", label=1)]
    items = parse_body(b'{"items": [{"request_id": "a", "label": 0.5}, {"request_id": "b", "label": [1, 0, 2.5]}]}')
    assert [(i.request_id, i.label) for i in items] == [("a", 0.5), ("b", [1, 0, 2.5])]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"request_id": "a"}', "send 'request_id' and 'label'"),
        (b'{"label": 1}', "send 'request_id' and 'label'"),
        (b'{"request_id": "a", "label": 1, "items": [{"request_id": "b", "label": 1}]}', "not both"),
        (b'{"request_id": "", "label": 1}', "request_id"),
        (b'{"request_id": "a", "label": "cat"}', "label"),
        (b'{"request_id": "a", "label": true}', "label"),
        (b'{"request_id": "a", "label": []}', "1 to 4096 numbers"),
        (b'{"request_id": "a", "label": 1, "extra": 2}', "extra"),
        (b'{"items": []}', "items"),
        (b'{"items": [{"request_id": "a", "label": [[1]]}]}', "items.0.label"),
        (b'{"items": [{"request_id": "a"}]}', "items.0.label"),
    ],
)
async def test_bad_bodies_say_what_is_wrong(raw: bytes, says: str) -> None:
    assert says in invalid_message(raw)


async def test_batch_size_is_bounded() -> None:
    body = {"items": [{"request_id": str(i), "label": 1} for i in range(1001)]}
    assert "items" in invalid_message(orjson.dumps(body))


def settings(root: Path, **kw: object) -> RequestLogSettings:
    return RequestLogSettings(dir=root, gateway_id="gw", **kw)  # type: ignore[arg-type]


def request_record(rid: str) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        time=1.0,
        model="m",
        version="1",
        role="primary",
        routing_reason="",
        inputs=(),
        outputs=(),
        code="OK",
        error="",
        queue_ms=0.0,
        model_ms=0.0,
        total_ms=0.0,
        batch_rows=0,
        client="",
        protocol="http",
    )


async def test_feedback_records_sit_apart_from_request_records(tmp_path: Path) -> None:
    requests = RequestLogWriter(settings(tmp_path)).start()
    registry = CollectorRegistry()
    feedback = FeedbackLog(settings(tmp_path, sample={"*": 0.0}), registry).start()  # sampling never applies
    await requests.append(request_record("r1"))
    assert (
        await feedback.submit(
            "m", [FeedbackItem(request_id="r1", label=1), FeedbackItem(request_id="r2", label=[0.5, 0.5])], "1.2.3.4:5"
        )
        == 2
    )
    # Answered only once written: readable now, before close.
    got = list(read_feedback(tmp_path))
    assert [(r["kind"], r["request_id"], r["model"], r["label"], r["client"]) for r in got] == [
        ("feedback", "r1", "m", 1, "1.2.3.4:5"),
        ("feedback", "r2", "m", [0.5, 0.5], "1.2.3.4:5"),
    ]
    assert all(r["format_version"] == 1 and r["gateway_id"] == "gw" and r["time"] > 0 for r in got)
    assert list(read_feedback(tmp_path, model="other")) == []
    # Readers of request records see request records only.
    assert [r["request_id"] for r in RequestLogReader(tmp_path)] == ["r1"]
    assert (tmp_path / "feedback" / "gw").is_dir()
    assert registry.get_sample_value("gateway_feedback_records_total", {"model": "m", "code": "OK"}) == 2
    await feedback.close()
    await requests.close()


async def test_a_label_over_the_record_limit_is_refused(tmp_path: Path) -> None:
    feedback = FeedbackLog(settings(tmp_path, max_record_bytes=4096)).start()
    with pytest.raises(GatewayError) as info:
        await feedback.submit("m", [FeedbackItem(request_id="a", label=[1.2345678] * 1000)])
    assert info.value.code == Code.INVALID_ARGUMENT and "max_record_bytes" in info.value.message
    await feedback.close()
    assert list(read_feedback(tmp_path)) == []


async def test_an_unwritable_folder_answers_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the folder should be")
    registry = CollectorRegistry()
    feedback = FeedbackLog(settings(blocker), registry).start()
    with pytest.raises(GatewayError) as info:
        await feedback.submit("m", [FeedbackItem(request_id="a", label=1)])
    assert info.value.code == Code.UNAVAILABLE and not feedback.healthy
    assert registry.get_sample_value("gateway_feedback_records_total", {"model": "m", "code": "UNAVAILABLE"}) == 1
    await feedback.close()


async def test_the_feedback_folder_name_is_not_a_gateway_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="taken by the feedback folder"):
        FeedbackLog(RequestLogSettings(dir=tmp_path, gateway_id="feedback"))


async def test_latest_label_wins() -> None:
    records = [
        {"request_id": "a", "time": 2.0, "label": 1},
        {"request_id": "a", "time": 1.0, "label": 0},
        {"request_id": "b", "time": 1.0, "label": 0},
        {"request_id": "b", "time": 1.0, "label": 1},
    ]
    assert {k: v["label"] for k, v in latest_labels(records).items()} == {"a": 1, "b": 1}


class NoDispatch:
    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        raise AssertionError("feedback never dispatches")


def catalog() -> Catalog:
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 2])]
    m = Manifest(name="m", version="1", runtime="array", inputs=spec, outputs=spec)
    return Catalog([VersionInfo.from_manifest(m, BatchingOverride())])


@pytest.fixture
async def door_and_log(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    feedback = FeedbackLog(settings(tmp_path)).start()
    door = HttpDoor(
        DataPlane(catalog(), NoDispatch()),
        max_body_bytes=4 << 20,
        max_elements=1 << 16,
        default_timeout_s=30.0,
        feedback=feedback,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        yield c, tmp_path
    await feedback.close()


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"])


async def test_http_feedback_is_written_before_the_answer(door_and_log: tuple[httpx.AsyncClient, Path]) -> None:
    client, root = door_and_log
    r = await client.post("/v2/models/m/feedback", json={"request_id": "q1", "label": 1})
    assert r.status_code == 200 and r.json() == {"model": "m", "accepted": 1}
    r = await client.post(
        "/v2/models/m/feedback", json={"items": [{"request_id": "q2", "label": 0}, {"request_id": "q3", "label": 2}]}
    )
    assert r.json() == {"model": "m", "accepted": 2}
    assert [(x["request_id"], x["label"], x["protocol"]) for x in read_feedback(root)] == [
        ("q1", 1, "http"),
        ("q2", 0, "http"),
        ("q3", 2, "http"),
    ]


async def test_http_feedback_faults(door_and_log: tuple[httpx.AsyncClient, Path]) -> None:
    client, root = door_and_log
    assert "unknown model 'nope'" in error(
        await client.post("/v2/models/nope/feedback", json={"request_id": "a", "label": 1}), 404
    )
    assert "feedback body field 'label'" in error(
        await client.post("/v2/models/m/feedback", json={"request_id": "a", "label": "x"}), 400
    )
    assert "not valid JSON" in error(await client.post("/v2/models/m/feedback", content=b"{"), 400)
    assert "/v2/models/m/feedback" in error(
        await client.post("/v2/models/m/versions/1/feedback", json={"request_id": "a", "label": 1}), 404
    )
    assert "POST" in error(await client.get("/v2/models/m/feedback"), 405)
    big = orjson.dumps({"request_id": "a", "label": [1.0] * 300_000})  # under the door's limit, over feedback's
    assert "over the limit of 1048576" in error(await client.post("/v2/models/m/feedback", content=big), 413)
    assert list(read_feedback(root)) == []


async def test_http_feedback_off_without_the_request_log() -> None:
    door = HttpDoor(
        DataPlane(catalog(), NoDispatch()), max_body_bytes=1 << 20, max_elements=1 << 16, default_timeout_s=30.0
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        r = await c.post("/v2/models/m/feedback", json={"request_id": "a", "label": 1})
    assert "request_log.enabled" in error(r, 501)
