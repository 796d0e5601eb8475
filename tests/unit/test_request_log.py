"""The request log writer: record format, durability modes, back-pressure, health, sampling, redaction, size cap."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import Code, GatewayError
from gateway.request_log import (
    FORMAT_VERSION,
    RequestLogReader,
    RequestLogSettings,
    RequestLogWriter,
    to_request_record,
)
from gateway.request_log.sink import SegmentSink
from gateway.types import RequestRecord, Tensor


def record(
    i: int,
    *,
    model: str = "m",
    version: str = "1",
    code: str = "OK",
    floats: int = 16,
    inputs: tuple[Tensor, ...] | None = None,
    error: str = "",
) -> RequestRecord:
    x = np.arange(floats, dtype=np.float32).reshape(1, floats) + i
    return RequestRecord(
        request_id=f"req-{i}",
        time=1_700_000_000.0 + i / 1000,
        model=model,
        version=version,
        role="primary",
        routing_reason="newest ready version",
        inputs=inputs if inputs is not None else (Tensor("x", "FP32", x),),
        outputs=(Tensor("y", "FP32", np.array([[0.25, 0.75]], np.float32)),) if code == "OK" else (),
        code=code,
        error=error,
        queue_ms=0.5,
        model_ms=1.25,
        total_ms=2.0 + i,
        batch_rows=1,
        client="127.0.0.1:5000",
        protocol="grpc",
        trace_id=f"t{i}",
    )


def settings(tmp_path: Path, **kw: Any) -> RequestLogSettings:
    base: dict[str, Any] = {"dir": tmp_path / "log", "gateway_id": "gw", "retain_bytes": None, "retain_s": None}
    return RequestLogSettings(**{**base, **kw})


def ids(root: Path) -> list[str]:
    return [r["request_id"] for r in RequestLogReader(root)]


class BlockingSink(SegmentSink):
    """A sink whose writes wait until the test releases them."""

    def __init__(self, s: RequestLogSettings) -> None:
        super().__init__(s.dir, s.gateway_id, rotate_bytes=s.rotate_bytes, rotate_s=s.rotate_s)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> None:
        self.entered.set()
        assert self.release.wait(30), "test never released the sink"
        super().write(data)


async def _wait_for(cond: Any, what: str) -> None:
    for _ in range(1000):  # a bound on polls, not a timing assertion
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def assert_same(a: RequestRecord, b: RequestRecord) -> None:
    for name in (
        "request_id",
        "time",
        "model",
        "version",
        "role",
        "routing_reason",
        "code",
        "error",
        "queue_ms",
        "model_ms",
        "total_ms",
        "batch_rows",
        "client",
        "protocol",
        "trace_id",
    ):
        assert getattr(a, name) == getattr(b, name), name
    for ta, tb in zip(a.inputs + a.outputs, b.inputs + b.outputs, strict=True):
        assert (ta.name, ta.datatype, ta.data.dtype, ta.data.shape) == (
            tb.name,
            tb.datatype,
            tb.data.dtype,
            tb.data.shape,
        )
        assert ta.data.tolist() == tb.data.tolist()


async def test_n_appends_read_back_equal(tmp_path: Path) -> None:
    blob = np.empty(2, dtype=object)
    blob[:] = [b"\xff\x00", b"ok"]
    words = np.empty((1, 2), dtype=object)
    words[0] = [b"hello", "w\u00f6rld".encode()]
    extra = (
        Tensor("i", "INT64", np.array([[1, -2]], np.int64)),
        Tensor("b", "BOOL", np.array([True, False])),
        Tensor("h", "FP16", np.array([0.5], np.float16)),
        Tensor("s", "BYTES", words),
        Tensor("raw", "BYTES", blob),
    )
    originals = [record(i) for i in range(40)]
    originals += [record(40, inputs=extra), record(41, code="NOT_FOUND", error="no model 'q'")]
    w = RequestLogWriter(settings(tmp_path)).start()
    for r in originals:
        await w.append(r)
    await w.close()
    back = list(RequestLogReader(tmp_path / "log"))
    assert len(back) == len(originals)
    for d, r in zip(back, originals, strict=True):
        assert d["format_version"] == FORMAT_VERSION and d["gateway_id"] == "gw" and d["truncated"] is False
        assert_same(to_request_record(d), r)
    assert back[40]["inputs"][4]["encoding"] == "base64"
    assert w.stats()["written"] == len(originals) and w.stats()["queue_depth"] == 0


async def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path)).start()
    await asyncio.gather(*(w.append(record(i)) for i in range(500)))
    await w.close()
    assert sorted(ids(tmp_path / "log")) == sorted(f"req-{i}" for i in range(500))
    assert w.stats()["batches"] < 500


async def test_buffered_record_is_visible_to_another_reader_before_close(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, durability="buffered")).start()
    await w.append(record(1))
    assert ids(tmp_path / "log") == ["req-1"]  # a separate open() of the segment sees it
    await w.close()


async def test_fsync_mode_fsyncs_before_append_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    w = RequestLogWriter(settings(tmp_path, durability="fsync")).start()
    await w.append(record(1))
    assert synced and ids(tmp_path / "log") == ["req-1"]
    before = len(synced)
    await w.append(record(2))
    assert len(synced) > before
    await w.close()


async def test_buffered_mode_never_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    w = RequestLogWriter(settings(tmp_path)).start()
    await w.append(record(1))
    await w.close()
    assert synced == [] and ids(tmp_path / "log") == ["req-1"]


class FailingSink(SegmentSink):
    """A sink with a bug: its first write raises something that is not an OSError."""

    failures = 1

    def write(self, data: bytes) -> None:
        if self.failures and data:
            self.failures -= 1
            raise RuntimeError("a bug in the sink")
        super().write(data)


async def test_a_bug_in_the_writer_thread_fails_the_batch_instead_of_hanging(tmp_path: Path) -> None:
    s = settings(tmp_path, retry_s=0.02)
    w = RequestLogWriter(s, sink=FailingSink(s.dir, "gw", rotate_bytes=s.rotate_bytes, rotate_s=s.rotate_s)).start()
    with pytest.raises(GatewayError) as err:
        await w.append(record(1))
    assert err.value.code == Code.UNAVAILABLE and "a bug in the sink" in w.last_error
    assert w.stats()["queue_depth"] == 0
    await _wait_for(lambda: w.healthy, "the writer recovers")
    await w.append(record(2))
    await w.close()
    assert ids(tmp_path / "log") == ["req-2"]


async def test_async_mode_returns_before_the_write_and_close_drains(tmp_path: Path) -> None:
    s = settings(tmp_path, durability="async")
    sink = BlockingSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    for i in range(5):
        await w.append(record(i))  # returns although the writer is stuck
    assert await asyncio.to_thread(sink.entered.wait, 10)
    assert ids(tmp_path / "log") == []
    sink.release.set()
    await w.close()
    assert ids(tmp_path / "log") == [f"req-{i}" for i in range(5)]


async def test_foreground_records_are_written_ahead_of_background_ones_in_one_batch(tmp_path: Path) -> None:
    s = settings(tmp_path)
    sink = BlockingSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    first = asyncio.create_task(w.append(record(0)))
    assert await asyncio.to_thread(sink.entered.wait, 10)  # the writer is busy: the next appends form one batch
    shadows = [
        asyncio.create_task(w.append(dataclasses.replace(record(i), role="shadow"), background=True)) for i in (1, 2, 3)
    ]
    primary = asyncio.create_task(w.append(record(4)))
    await asyncio.sleep(0)
    sink.release.set()
    await asyncio.gather(first, primary, *shadows)
    await w.close()
    assert ids(tmp_path / "log") == ["req-0", "req-4", "req-1", "req-2", "req-3"]


class SteppedSink(SegmentSink):
    """A sink that counts its writes and holds each one until the test lets it through."""

    def __init__(self, s: RequestLogSettings) -> None:
        super().__init__(s.dir, s.gateway_id, rotate_bytes=s.rotate_bytes, rotate_s=s.rotate_s)
        self.writes = 0
        self.steps = threading.Semaphore(0)

    def write(self, data: bytes) -> None:
        self.writes += 1
        assert self.steps.acquire(timeout=30), "test never let the write through"
        super().write(data)


async def test_an_append_waits_for_its_own_write_not_an_earlier_batch(tmp_path: Path) -> None:
    # Appends between two takes share one future: one made after a take must not be woken by that take's write.
    s = settings(tmp_path)
    sink = SteppedSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    first = [asyncio.create_task(w.append(record(i))) for i in (0, 1)]
    await _wait_for(lambda: sink.writes == 1, "the writer took the first batch")
    second = [asyncio.create_task(w.append(record(i))) for i in (2, 3)]
    await asyncio.sleep(0)  # the second appends are queued while the first batch is being written
    sink.steps.release()
    await asyncio.gather(*first)
    await _wait_for(lambda: sink.writes == 2, "the writer took the second batch")
    assert not any(t.done() for t in second)  # their records are not written yet
    sink.steps.release()
    await asyncio.gather(*second)
    await w.close()
    assert ids(tmp_path / "log") == ["req-0", "req-1", "req-2", "req-3"]


@pytest.mark.parametrize("durability", ["buffered", "async"])
async def test_queue_full_reject_raises_unavailable(tmp_path: Path, durability: str) -> None:
    s = settings(tmp_path, durability=durability, max_queue_records=3, on_full="reject")
    sink = BlockingSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    first = asyncio.create_task(w.append(record(0)))
    assert await asyncio.to_thread(sink.entered.wait, 10)  # record 0 is being written: it still counts
    queued = [asyncio.create_task(w.append(record(i))) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as err:
        await w.append(record(3))
    assert err.value.code == Code.UNAVAILABLE and "full" in err.value.message
    assert w.stats()["queue_depth"] == 3 and w.stats()["rejected"] == 1
    sink.release.set()
    await asyncio.gather(first, *queued)
    await w.close()
    assert ids(tmp_path / "log") == ["req-0", "req-1", "req-2"]


async def test_queue_full_drop_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    s = settings(tmp_path, max_queue_records=2, on_full="drop")
    sink = BlockingSink(s)
    w = RequestLogWriter(s, registry, sink=sink).start()
    tasks = [asyncio.create_task(w.append(record(0)))]
    assert await asyncio.to_thread(sink.entered.wait, 10)
    tasks.append(asyncio.create_task(w.append(record(1))))
    await asyncio.sleep(0)
    await w.append(record(2))  # returns at once: dropped, counted
    assert w.stats()["dropped"]["queue_full"] == 1
    assert registry.get_sample_value("gateway_request_log_records_dropped_total", {"reason": "queue_full"}) == 1
    assert registry.get_sample_value("gateway_request_log_queue_depth") == 2 == w.stats()["queue_depth"]
    sink.release.set()
    await asyncio.gather(*tasks)
    await w.close()
    assert ids(tmp_path / "log") == ["req-0", "req-1"]
    assert registry.get_sample_value("gateway_request_log_records_written_total") == 2


@pytest.mark.parametrize("policy", ["reject", "drop"])
async def test_unwritable_root_is_reported_and_follows_the_policy(tmp_path: Path, policy: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's parent folder should be")
    registry = CollectorRegistry()
    s = RequestLogSettings(dir=blocker / "log", gateway_id="gw", on_full=policy, retry_s=0.02)
    w = RequestLogWriter(s, registry).start()
    assert w.healthy is False and w.last_error
    assert registry.get_sample_value("gateway_request_log_healthy") == 0
    if policy == "reject":
        with pytest.raises(GatewayError) as err:
            await w.append(record(1))
        assert err.value.code == Code.UNAVAILABLE and "cannot write" in err.value.message
        assert w.stats()["rejected"] == 1
    else:
        await w.append(record(1))
        assert w.stats()["dropped"]["io_error"] == 1
    # The folder becomes writable: the writer notices by itself and logs again.
    blocker.unlink()
    blocker.mkdir()
    await _wait_for(lambda: w.healthy, "the writer recovers")
    await w.append(record(2))
    await w.close()
    assert ids(blocker / "log") == ["req-2"]
    assert registry.get_sample_value("gateway_request_log_healthy") == 1


@pytest.mark.parametrize("policy", ["reject", "drop"])
async def test_folder_replaced_by_a_file_while_running(tmp_path: Path, policy: str) -> None:
    s = settings(tmp_path, rotate_bytes=1024, on_full=policy)
    w = RequestLogWriter(s).start()
    await w.append(record(1, floats=300))  # over rotate_bytes: the segment is closed after this write
    gw_dir = tmp_path / "log" / "gw"
    shutil.rmtree(gw_dir)
    gw_dir.write_text("not a folder any more")
    if policy == "reject":
        with pytest.raises(GatewayError) as err:
            await w.append(record(2))
        assert err.value.code == Code.UNAVAILABLE
        assert w.stats()["rejected"] == 1
    else:
        await w.append(record(2))
        assert w.stats()["dropped"]["io_error"] == 1
    assert w.healthy is False and w.last_error
    await w.close()


async def test_closed_log_follows_the_policy(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path)).start()
    await w.close()
    with pytest.raises(GatewayError, match="closed"):
        await w.append(record(1))
    d = RequestLogWriter(settings(tmp_path, on_full="drop")).start()
    await d.close()
    await d.append(record(1))
    assert d.stats()["dropped"]["closed"] == 1


async def test_close_writes_every_accepted_record(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, durability="async", max_queue_records=100_000)).start()
    for i in range(2000):
        await w.append(record(i))
    await w.close()
    assert len(ids(tmp_path / "log")) == 2000 and w.stats()["written"] == 2000


async def test_sampling_per_model_never_drops_errors(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, sample={"*": 0.5, "quiet": 0.0, "loud": 1.0}), seed=7).start()
    for i in range(400):
        await w.append(record(i, model="quiet"))
        await w.append(record(1000 + i, model="loud"))
        await w.append(record(2000 + i, model="other"))
    for i in range(20):
        await w.append(record(3000 + i, model="quiet", code="INTERNAL", error="boom"))
    await w.close()
    by_model = Counter((r["model"], r["code"]) for r in RequestLogReader(tmp_path / "log"))
    assert by_model[("quiet", "OK")] == 0 and by_model[("quiet", "INTERNAL")] == 20
    assert by_model[("loud", "OK")] == 400
    assert 120 < by_model[("other", "OK")] < 280  # seeded: the same count every run
    assert w.stats()["sampled_out"] == 800 - by_model[("other", "OK")]


async def test_redaction_masks_or_drops_named_inputs(tmp_path: Path) -> None:
    inputs = (
        Tensor("x", "FP32", np.ones((1, 3), np.float32)),
        Tensor("ssn", "INT64", np.array([[123456789]])),
        Tensor("note", "BYTES", np.array([b"secret"], dtype=object)),
    )
    w = RequestLogWriter(settings(tmp_path, redact_inputs={"ssn": "mask", "note": "drop"})).start()
    await w.append(record(1, inputs=inputs))
    await w.close()
    (r,) = RequestLogReader(tmp_path / "log")
    assert [t["name"] for t in r["inputs"]] == ["x", "ssn"]
    assert r["inputs"][1] == {"name": "ssn", "datatype": "INT64", "shape": [1, 1], "data": None, "redacted": True}
    assert r["inputs"][0]["data"] == [1.0, 1.0, 1.0]
    assert b"123456789" not in (tmp_path / "log" / "gw" / "segment-0000000000.jsonl").read_bytes()


async def test_size_cap_drops_tensor_data_keeps_metadata(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, max_record_bytes=4096)).start()
    await w.append(record(1, floats=5000))
    await w.append(record(2))
    await w.append(record(3, code="INTERNAL", error="x" * 20_000))
    await w.close()
    big, small, err = RequestLogReader(tmp_path / "log")
    assert big["truncated"] is True and big["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [1, 5000], "data": None}
    ]
    assert big["outputs"][0]["shape"] == [1, 2] and big["total_ms"] == 3.0
    assert small["truncated"] is False and len(small["inputs"][0]["data"]) == 16
    assert err["truncated"] is True and err["code"] == "INTERNAL" and len(err["error"]) < 4096
    assert w.stats()["truncated"] == 2
    sizes = [len(line) for line in (tmp_path / "log" / "gw" / "segment-0000000000.jsonl").read_bytes().splitlines()]
    assert max(sizes) <= 4096


async def test_two_writers_with_one_id_get_distinct_folders(tmp_path: Path) -> None:
    a = RequestLogWriter(settings(tmp_path)).start()
    b = RequestLogWriter(settings(tmp_path)).start()
    assert (a.gateway_id, b.gateway_id) == ("gw", "gw-1")
    await a.append(record(1))
    await b.append(record(2))
    await a.close()
    await b.close()
    assert [(r["gateway_id"], r["request_id"]) for r in RequestLogReader(tmp_path / "log")] == [
        ("gw", "req-1"),
        ("gw-1", "req-2"),
    ]
    c = RequestLogWriter(settings(tmp_path)).start()  # the id is free again after close
    assert c.gateway_id == "gw"
    await c.close()


async def test_flush_and_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    w = RequestLogWriter(settings(tmp_path, durability="async"), registry).start()
    for i in range(10):
        await w.append(record(i))
    await w.flush()
    assert len(ids(tmp_path / "log")) == 10
    assert registry.get_sample_value("gateway_request_log_records_written_total") == 10
    assert registry.get_sample_value("gateway_request_log_queue_depth") == 0
    assert registry.get_sample_value("gateway_request_log_healthy") == 1
    assert registry.get_sample_value("gateway_request_log_bytes_written_total") == w.stats()["bytes"] > 0
    await w.close()


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        RequestLogSettings(sample={"m": 1.5})
    with pytest.raises(ValueError):
        RequestLogSettings(durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RequestLogSettings(gateway_id="../escape")
    assert RequestLogSettings(sample={"*": 0.25}).sample_rate("any") == 0.25


async def test_append_cost_is_small(tmp_path: Path) -> None:
    """Not a timing assertion: prints the cost so that a run with -s shows it."""
    w = RequestLogWriter(settings(tmp_path, max_queue_records=100_000)).start()
    r = record(1)
    start = time.perf_counter()
    for _ in range(20):
        await asyncio.gather(*(w.append(r) for _ in range(100)))
    print(f"\nbuffered append, 100 concurrent: {(time.perf_counter() - start) / 2000 * 1e6:.1f} us each")
    await w.close()
    assert w.stats()["written"] == 2000


def test_package_exports_resolve() -> None:
    import gateway.request_log as package

    assert sorted(package.__all__) == sorted(package._WHERE)
    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError):
        _ = package.nothing_like_this


async def test_a_cancelled_append_does_not_fail_the_others_written_with_it(tmp_path: Path) -> None:
    s = settings(tmp_path)
    sink = SteppedSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    tasks = [asyncio.create_task(w.append(record(i))) for i in range(3)]
    await _wait_for(lambda: sink.writes == 1, "the writer took the batch")
    tasks[1].cancel()  # one client goes away while its record is being written
    await asyncio.sleep(0)
    sink.steps.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], asyncio.CancelledError)
    await w.close()
    assert ids(tmp_path / "log") == ["req-0", "req-1", "req-2"]  # accepted, so written
