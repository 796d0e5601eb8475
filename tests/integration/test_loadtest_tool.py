"""The load tool against a real running gateway: counts add up, the rate holds, a stall is not hidden."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from loadtests import LoadConfig, run_load
from loadtests.report import Report
from tests.integration.conftest import STALL_MARKER, RunningGateway


def _stall_once(gw: RunningGateway, after_s: float) -> threading.Thread:
    def stall() -> None:
        time.sleep(after_s)
        x = np.full((1, 4), STALL_MARKER, np.float32)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        grpcclient.InferenceServerClient(gw.grpc).infer("stall", [inp])

    t = threading.Thread(target=stall, daemon=True)
    t.start()
    return t


def _run(cfg: LoadConfig) -> Report:
    report = run_load(cfg)
    assert isinstance(report, Report)
    assert report.sent == report.ok + sum(report.errors_by_code.values()) == report.ok + report.errors
    return report


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_open_loop_rate_holds_and_a_stall_shows_in_p99(gateway: RunningGateway, scheme: str) -> None:
    address = gateway.grpc if scheme == "grpc" else gateway.http
    stall = _stall_once(gateway, after_s=1.5)
    report = _run(
        LoadConfig(
            target=f"{scheme}://{address}",
            model="stall",
            rate=100.0,
            arrival="constant",
            duration_s=4.0,
            warmup_s=0.0,
            progress=False,
        )
    )
    stall.join(10)
    assert report.errors == 0, report.errors_by_code
    assert report.achieved_qps == pytest.approx(100.0, rel=0.1)
    # Requests due during the 0.5 s stall are timed from when they were due, not when they got out.
    assert report.latency_ms["p99"] >= 300.0, report.latency_ms


def test_closed_loop_counts_add_up(gateway: RunningGateway) -> None:
    report = _run(
        LoadConfig(
            target=f"http://{gateway.http}",
            model="breast_cancer",
            concurrency=8,
            duration_s=2.0,
            warmup_s=0.0,
            progress=False,
        )
    )
    assert report.ok > 0 and report.errors == 0, report.errors_by_code


@pytest.mark.parametrize("shared_memory", [False, True], ids=["streaming", "streaming+shm"])
def test_streaming_and_shared_memory_counts_add_up(gateway: RunningGateway, shared_memory: bool) -> None:
    report = _run(
        LoadConfig(
            target=f"grpc://{gateway.grpc}",
            model="breast_cancer",
            concurrency=16,
            max_requests=400,
            duration_s=60.0,
            progress=False,
            streaming=True,
            shared_memory=shared_memory,
        )
    )
    assert report.ok == 400 and report.errors == 0, report.errors_by_code


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_a_mixed_profile_names_each_class_to_the_gateway(gateway: RunningGateway, scheme: str) -> None:
    # The gateway knows 'critical' and refuses a class it does not know (400 / INVALID_ARGUMENT): the class
    # header reaches it on both doors, and the report keeps the two classes' outcomes apart.
    address = gateway.grpc if scheme == "grpc" else gateway.http
    report = _run(
        LoadConfig(
            target=f"{scheme}://{address}",
            model="stall",
            rate=60.0,
            duration_s=1.0,
            seed=7,
            progress=False,
            mix="critical=1,platinum=1",
            class_deadlines="critical=5s,platinum=5s",
        )
    )
    critical, unknown = report.classes
    assert critical.sent > 5 and critical.good == critical.ok == critical.sent, critical
    assert critical.goodput_qps > 0 and critical.latency_ms["p99"] < 5000
    code = "INVALID_ARGUMENT" if scheme == "grpc" else "HTTP_400"
    assert unknown.sent > 5 and unknown.ok == 0 and unknown.errors_by_code == {code: unknown.sent}, unknown
