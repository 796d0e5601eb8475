"""`gateway logs tail | query | compact`, driven through argparse as the gateway command mounts them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from contract.request_log.segments import list_segments
from gateway.request_log import RequestLogWriter, Tailer
from gateway.request_log import cli as logs_cli
from tests.unit.test_request_log import record, settings


def gateway(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    sub = parser.add_subparsers(dest="command")
    logs_cli.add_parser(sub)
    return logs_cli.run(parser.parse_args(["logs", *argv]))


@pytest.fixture
async def log_root(tmp_path: Path) -> Path:
    w = RequestLogWriter(settings(tmp_path, rotate_bytes=2048)).start()
    for i in range(9):
        await w.append(record(i, model="a" if i % 2 else "b", version=str(1 + i % 3), floats=100))
    await w.append(record(9, model="a", code="NOT_FOUND", error="model 'a' has no version '7'"))
    await w.close()
    return tmp_path / "log"


def test_tail_prints_the_last_records(log_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway(["tail", "--dir", str(log_root), "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "id req-9" in lines[-1] and "NOT_FOUND" in lines[-1] and "error: model 'a'" in lines[-1]
    assert gateway(["tail", "--dir", str(log_root), "--model", "b", "--json", "-n", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all('"model":"b"' in line for line in out)


def test_tail_with_a_checkpoint_prints_each_record_once(
    log_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(tmp_path / "ckpt.json")
    assert gateway(["tail", "--dir", str(log_root), "--checkpoint", ckpt]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10
    assert gateway(["tail", "--dir", str(log_root), "--checkpoint", ckpt]) == 0
    assert capsys.readouterr().out == ""
    assert Tailer(log_root, ckpt).poll() == []


def test_query_prints_a_table(log_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT version, count(*) AS n, avg(total_ms) AS avg_ms FROM requests GROUP BY 1 ORDER BY 1"
    assert gateway(["query", sql, "--dir", str(log_root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["version", "n", "avg_ms"] and out[-1] == "(3 rows)"
    assert out[2].split() == ["1", "4", "6.5"]  # requests 0, 3, 6 and 9: total_ms is 2 + i
    assert gateway(["query", "SELECT nonsense FROM requests", "--dir", str(log_root)]) == 1
    assert "nonsense" in capsys.readouterr().err
    assert (
        gateway(["query", "SELECT code, count(*) FROM requests GROUP BY 1 ORDER BY 1", "--dir", str(log_root), "--csv"])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["code,count_star()", "NOT_FOUND,1", "OK,9"]


def test_compact(log_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = [s.seq for s in list_segments(log_root)["gw"]]
    assert gateway(["compact", "--dir", str(log_root), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("would compact") == len(before)
    assert gateway(["compact", "--dir", str(log_root)]) == 0
    assert "compacted" in capsys.readouterr().err
    assert [(s.seq, s.kind) for s in list_segments(log_root)["gw"]] == [(seq, "parquet") for seq in before]
    assert gateway(["tail", "--dir", str(log_root), "-n", "100"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gateway(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "gateway logs query" in out and "tail" in out and "compact" in out
    assert gateway([]) == 2
