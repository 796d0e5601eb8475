"""The request log on disk: rotation, retention, compaction, the tailer's checkpoints, DuckDB queries."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from contract.request_log.segments import apply_retention, closed_segments, list_gateway, list_segments, segment_path
from gateway.request_log import (
    FormatVersionError,
    RequestLogReader,
    RequestLogWriter,
    Tailer,
    compact_closed,
    read_segment,
)
from gateway.request_log import tailer as tailer_module
from gateway.request_log.query import query
from tests.unit.conftest import FakeClock
from tests.unit.test_request_log import ids, record, settings


def kinds(root: Path) -> list[tuple[int, str]]:
    return [(s.seq, s.kind) for segs in list_segments(root).values() for s in segs]


async def test_rotation_by_size(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    for i in range(20):
        await w.append(record(i, floats=100))  # about 900 bytes each
    await w.close()
    root = tmp_path / "log"
    segs = list_segments(root)["gw"]
    sizes = [s.path.stat().st_size for s in segs]
    line = max(len(x) for s in segs for x in s.path.read_bytes().splitlines(keepends=True))
    assert len(segs) > 3 and [s.seq for s in segs] == list(range(len(segs)))
    assert all(2048 <= size < 2048 + line for size in sizes[:-1]) and sizes[-1] < 2048 + line
    assert ids(root) == [f"req-{i}" for i in range(20)]


async def test_rotation_by_age_with_a_fake_clock(tmp_path: Path, clock: FakeClock) -> None:
    w = RequestLogWriter(settings(tmp_path, rotate_s=60), clock=clock).start()
    await w.append(record(1))
    clock.advance(30)
    await w.append(record(2))
    assert kinds(tmp_path / "log") == [(0, "jsonl")]
    clock.advance(31)
    await w.flush()  # an idle writer rotates on its own; flush makes it look now
    assert w.stats()["segments_closed"] == 1 and w.stats()["segment"] == ""
    await w.append(record(3))
    clock.advance(61)
    await w.append(record(4))  # the old segment is closed before this write
    await w.close()
    per_segment = [[r["request_id"] for r in read_segment(s)] for s in list_segments(tmp_path / "log")["gw"]]
    assert per_segment == [["req-1", "req-2"], ["req-3"], ["req-4"]]


async def test_retention_by_size_deletes_oldest_closed_segments(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048, retain_bytes=9000)).start()
    for i in range(31):
        await w.append(record(i, floats=100))
    await w.flush()  # retention runs after the appends are answered; flush waits for it
    root = tmp_path / "log"
    segs = list_segments(root)["gw"]
    seqs = [s.seq for s in segs]
    assert w.stats()["segment"] == str(segs[-1].path)  # the open segment is the newest
    assert seqs[0] > 0 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the oldest are gone
    assert 9000 - 3000 < sum(s.path.stat().st_size for s in segs[:-1]) <= 9000  # checked at each rotation
    assert ids(root)[-1] == "req-30"
    await w.close()


async def test_retention_by_age_spares_the_open_segment(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    w = RequestLogWriter(settings(tmp_path, rotate_s=100, retain_s=3600), clock=clock).start()
    for i in range(3):
        await w.append(record(i))
        clock.advance(101)  # each append starts a new segment
    segs = list_segments(tmp_path / "log")["gw"]
    assert [s.seq for s in segs] == [0, 1, 2]
    old = time.time() - 7200
    for s in segs:
        os.utime(s.path, (old, old))  # all three look two hours old, the open one too
    await w.append(record(3))  # closes segment 2 (age), writes segment 3, then retention runs
    await w.flush()
    assert [s.seq for s in list_segments(tmp_path / "log")["gw"]] == [3]
    assert ids(tmp_path / "log") == ["req-3"]
    await w.close()


def test_retention_never_deletes_the_newest_segment(tmp_path: Path) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    old = time.time() - 7200
    for seq in range(3):
        path = segment_path(gw_dir, seq, "jsonl" if seq else "parquet")
        path.write_bytes(b"x" * 100)
        os.utime(path, (old, old))
    (gw_dir / "segment-0000000003.jsonl").write_bytes(b"y" * 100)  # fresh
    assert [s.seq for s in apply_retention(gw_dir, None, 3600, time.time())] == [0, 1, 2]
    assert [s.seq for s in list_gateway(gw_dir)] == [3]
    os.utime(gw_dir / "segment-0000000003.jsonl", (old, old))
    assert apply_retention(gw_dir, 10, 3600, time.time()) == []  # the newest stays: seqs are never reused


async def test_partial_last_line_is_left_for_the_next_poll(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path)).start()
    await w.append(record(1))
    await w.append(record(2))
    await w.close()
    path = list_segments(tmp_path / "log")["gw"][0].path
    full = path.read_bytes()
    line = full.splitlines(keepends=True)[0].replace(b"req-1", b"req-3")
    with open(path, "ab") as f:
        f.write(line[:25])  # a writer in the middle of a line
    tailer = Tailer(tmp_path / "log")
    assert [r["request_id"] for r in tailer.poll()] == ["req-1", "req-2"]
    assert tailer.poll() == [] and ids(tmp_path / "log") == ["req-1", "req-2"]
    with open(path, "ab") as f:
        f.write(line[25:])
    assert [r["request_id"] for r in tailer.poll()] == ["req-3"]


async def test_checkpoint_restart_resumes_exactly(tmp_path: Path) -> None:
    root, ckpt = tmp_path / "log", tmp_path / "ckpt.json"
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    for i in range(10):
        await w.append(record(i, floats=100))
    t = Tailer(root, ckpt)
    got = [r["request_id"] for r in t.poll(max_records=4)]
    t.commit()
    t.poll(max_records=3)  # consumed but never committed: a restart delivers these again
    for i in range(10, 14):
        await w.append(record(i, floats=100))
    got += [r["request_id"] for r in Tailer(root, ckpt).poll()]
    assert got == [f"req-{i}" for i in range(14)]
    await w.close()


async def test_compaction_after_partial_read_continues_by_record_index(tmp_path: Path) -> None:
    root, ckpt = tmp_path / "log", tmp_path / "ckpt.json"
    w = RequestLogWriter(settings(tmp_path)).start()
    for i in range(6):
        await w.append(record(i))
    t = Tailer(root, ckpt)
    got = [r["request_id"] for r in t.poll(max_records=2)]
    t.commit()
    await w.close()  # the only segment is closed now: no writer holds the folder
    assert [s.kind for s in closed_segments(root / "gw")] == ["jsonl"]
    assert len(compact_closed(root)) == 1 and kinds(root) == [(0, "parquet")]
    got += [r["request_id"] for r in Tailer(root, ckpt).poll()]
    assert got == [f"req-{i}" for i in range(6)]


async def test_a_live_writers_open_segment_is_not_compacted(tmp_path: Path) -> None:
    root = tmp_path / "log"
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    i = 0
    while len(list_segments(root).get("gw", [])) < 2 or w.stats()["segment"]:
        await w.append(record(i, floats=100))  # until two segments are closed
        i += 1
    await w.append(record(i))
    compact_closed(root)
    assert kinds(root) == [(0, "parquet"), (1, "parquet"), (2, "jsonl")]
    await w.close()
    compact_closed(root)
    assert kinds(root) == [(0, "parquet"), (1, "parquet"), (2, "parquet")]
    assert ids(root) == [f"req-{j}" for j in range(i + 1)]


@pytest.mark.parametrize("seed", range(6))
async def test_random_interleavings_of_writes_polls_compactions_restarts(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    root, ckpt = tmp_path / "log", tmp_path / "ckpt.json"
    writers = [RequestLogWriter(settings(tmp_path, rotate_bytes=rnd.choice([1024, 2048, 4096]))).start()]
    tailer = Tailer(root, ckpt)
    written: list[str] = []
    delivered: list[str] = []
    n = 0
    for _ in range(120):
        op = rnd.random()
        if op < 0.45:
            for _ in range(rnd.randint(1, 5)):
                w = rnd.choice(writers)
                await w.append(record(n, floats=rnd.choice([4, 16, 100])))
                written.append(f"req-{n}")
                n += 1
        elif op < 0.65:
            delivered += [r["request_id"] for r in tailer.poll(max_records=rnd.choice([None, 1, 3, 10]))]
            tailer.commit()
        elif op < 0.8:
            compact_closed(root)
        elif op < 0.88:
            tailer = Tailer(root, ckpt)  # restart from the checkpoint
        elif op < 0.95:
            w = writers.pop(rnd.randrange(len(writers)))
            await w.close()  # a gateway stops; another starts (maybe with the freed id)
            writers.append(RequestLogWriter(settings(tmp_path, rotate_bytes=1024)).start())
        elif len(writers) < 3:
            writers.append(RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start())
    for w in writers:
        await w.close()
    compact_closed(root)
    delivered += [r["request_id"] for r in tailer.poll()]
    assert sorted(delivered) == sorted(written) and len(set(delivered)) == len(delivered)
    assert sorted(ids(root)) == sorted(written)
    # Within one gateway folder, records come in the order they were written.
    order = {rid: i for i, rid in enumerate(written)}
    by_gw: dict[str, list[int]] = {}
    for r in RequestLogReader(root):
        by_gw.setdefault(r["gateway_id"], []).append(order[r["request_id"]])
    assert all(v == sorted(v) for v in by_gw.values())


async def test_compactor_and_tailer_threads_run_concurrently(tmp_path: Path) -> None:
    root, ckpt = tmp_path / "log", tmp_path / "ckpt.json"
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=1024)).start()
    stop = threading.Event()
    delivered: list[str] = []
    errors: list[BaseException] = []

    def compactor() -> None:
        try:
            while not stop.is_set():
                compact_closed(root)
        except Exception as exc:  # noqa: BLE001 - handed to the test's assertion
            errors.append(exc)

    def tailer() -> None:
        try:
            rnd = random.Random(1)
            t = Tailer(root, ckpt)
            while not stop.is_set():
                delivered.extend(r["request_id"] for r in t.poll(max_records=rnd.choice([None, 1, 5])))
                t.commit()
                if rnd.random() < 0.1:
                    t = Tailer(root, ckpt)
            delivered.extend(r["request_id"] for r in Tailer(root, ckpt).poll())
        except Exception as exc:  # noqa: BLE001 - handed to the test's assertion
            errors.append(exc)

    threads = [threading.Thread(target=compactor), threading.Thread(target=tailer)]
    for th in threads:
        th.start()
    for i in range(400):
        await w.append(record(i, floats=20))
        if i % 50 == 0:
            await asyncio.sleep(0.01)  # let the other threads take turns
    await w.close()
    compact_closed(root)
    stop.set()
    for th in threads:
        await asyncio.to_thread(th.join)
    assert not errors
    assert delivered == [f"req-{i}" for i in range(400)]


async def test_duckdb_query_over_mixed_jsonl_and_parquet(tmp_path: Path) -> None:
    root = tmp_path / "log"
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    for i in range(12):
        await w.append(record(i, version="1" if i % 3 else "2", floats=100))
    compact_closed(root)
    for i in range(12, 15):
        await w.append(record(i, version="1" if i % 3 else "2", floats=100))
    assert {k for _, k in kinds(root)} == {"jsonl", "parquet"}
    columns, rows = query(
        root, "SELECT version, count(*) AS n, avg(total_ms) AS ms FROM requests GROUP BY 1 ORDER BY 1"
    )
    assert columns == ["version", "n", "ms"]
    v1 = [2.0 + i for i in range(15) if i % 3]
    v2 = [2.0 + i for i in range(15) if not i % 3]
    assert rows == [("1", len(v1), pytest.approx(sum(v1) / len(v1))), ("2", len(v2), pytest.approx(sum(v2) / len(v2)))]
    _, rows = query(root, "SELECT count(DISTINCT request_id), min(ts) IS NOT NULL FROM requests")
    assert rows == [(15, True)]
    _, rows = query(root, "SELECT json_extract(inputs, '$[0].shape') FROM requests WHERE request_id = 'req-0'")
    assert rows == [("[1,100]",)]
    await w.close()


def test_query_over_an_empty_root(tmp_path: Path) -> None:
    assert query(tmp_path / "nothing", "SELECT count(*) FROM requests")[1] == [(0,)]


async def test_tailer_listing_taken_before_a_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The segment is compacted between the tailer's listing and its open(): it goes on in the .parquet."""
    root = tmp_path / "log"
    w = RequestLogWriter(settings(tmp_path)).start()
    for i in range(5):
        await w.append(record(i))
    await w.close()
    t = Tailer(root)
    assert [r["request_id"] for r in t.poll(max_records=2)] == ["req-0", "req-1"]
    stale = list_segments(root)
    compact_closed(root)
    monkeypatch.setattr(tailer_module, "list_segments", lambda _root: stale)
    assert [r["request_id"] for r in t.poll()] == ["req-2", "req-3", "req-4"]
    assert list(read_segment(stale["gw"][0], start=3)) == list(RequestLogReader(root))[3:]


async def test_tailer_keeps_positions_of_segments_a_listing_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory read racing a rename may miss a segment: its position must survive (no re-delivery)."""
    root = tmp_path / "log"
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    for i in range(9):
        await w.append(record(i, floats=100))
    await w.close()
    t = Tailer(root)
    first = t.poll()
    real = list_segments(root)
    monkeypatch.setattr(tailer_module, "list_segments", lambda _root: {"gw": real["gw"][1:]})
    assert t.poll() == [] and real["gw"][0].key in t.positions
    monkeypatch.undo()
    assert t.poll() == [] and len(first) == 9
    assert list_gateway(root / "gw") == real["gw"]


def test_listing_fills_a_gap_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    for seq in range(3):
        segment_path(gw_dir, seq, "jsonl").write_bytes(b"")
    real_scandir = os.scandir

    def scandir_missing_one(path: Path) -> object:  # as if a rename of segment 1 raced the read
        class Filtered:
            def __init__(self) -> None:
                self.it = real_scandir(path)

            def __enter__(self) -> object:
                return (e for e in self.it.__enter__() if "0000000001" not in e.name)

            def __exit__(self, *exc: object) -> None:
                self.it.__exit__(*exc)

        return Filtered()

    monkeypatch.setattr(os, "scandir", scandir_missing_one)
    assert [s.seq for s in list_gateway(gw_dir)] == [0, 1, 2]


def test_unknown_format_version_stops_the_reader(tmp_path: Path) -> None:
    gw_dir = tmp_path / "log" / "gw"
    gw_dir.mkdir(parents=True)
    segment_path(gw_dir, 0, "jsonl").write_bytes(b'{"format_version":2,"request_id":"x"}\n')
    with pytest.raises(FormatVersionError, match="format_version 2"):
        list(RequestLogReader(tmp_path / "log"))
    segment_path(gw_dir, 0, "jsonl").write_bytes(b"[1, 2]\nnot json\n")  # not records: skipped
    assert list(RequestLogReader(tmp_path / "log")) == []
