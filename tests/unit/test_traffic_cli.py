"""`gateway traffic`: argument parsing and what it prints (the admin API itself is tested elsewhere)."""

from __future__ import annotations

import argparse

import pytest

from gateway.traffic.cli import _duration, _fraction, _print


@pytest.mark.parametrize(("text", "value"), [("0.2", 0.2), ("20%", 0.2), ("1", 1.0), ("0", 0.0), ("1%", 0.01)])
def test_fractions(text: str, value: float) -> None:
    assert _fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1.5", "150%", "x", "-1"])
def test_bad_fractions(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _fraction(text)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("45", 45), ("0.5m", 30)])
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "-5s", "0"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)


def test_show_prints_split_shadows_and_ramp(capsys: pytest.CaptureFixture[str]) -> None:
    _print(
        "show",
        {
            "model": "m",
            "weights": {"1": 95, "2": 5},
            "shadows": {"3": 0.2},
            "revision": 7,
            "ramp": {
                "version": "2",
                "percent": 5,
                "steps": [5, 50, 100],
                "every_s": 600.0,
                "live": {"requests": 40, "error_rate": 0.025},
            },
        },
        "m",
    )
    out = capsys.readouterr().out
    assert "revision 7" in out and "v1=95%  v2=5%" in out and "v3 (20% of requests)" in out
    assert "ramp: v2 at 5% (steps 5,50,100, every 600 s); this step: 40 requests, 2.5% errors" in out
    _print(
        "show",
        {
            "model": "m",
            "weights": {"1": 95, "2": 5},
            "revision": 8,
            "ramp": {
                "version": "2",
                "percent": 5,
                "steps": [5, 50, 100],
                "every_s": 600.0,
                "live": {"requests": 3, "error_rate": 0.0, "pinned": {"requests": 12, "failures": 1}},
            },
        },
        "m",
    )
    assert (
        "this step: 3 requests, 0.0% errors; pinned to v2, not counted: 12 requests, 1 failed"
        in capsys.readouterr().out
    )


def test_history_prints_splits_and_shadow_changes(capsys: pytest.CaptureFixture[str]) -> None:
    _print(
        "history",
        [
            {"revision": 1, "time": 0, "who": "alice", "before": None, "after": {"1": 100}, "reason": "a"},
            {
                "revision": 2,
                "time": 0,
                "who": "bob",
                "before": {"shadows": {}},
                "after": {"shadows": {"2": 0.5}},
                "reason": "b",
            },
        ],
        "m",
    )
    lines = capsys.readouterr().out.splitlines()
    assert "alice" in lines[0] and "(none) -> v1=100%" in lines[0]
    assert "shadows none -> shadows v2:0.5" in lines[1]
