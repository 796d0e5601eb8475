"""Ramp plans (contract/ramp.py) and the cluster's table state (serving/traffic_table.py) with a fake clock, fed by
the data plane's live counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.ramp import N_BUCKETS, PINNED_SUFFIX, PlanError, Ramp, RampPlan, Window, latency_bucket, split_with
from gateway.core import DataPlane
from gateway.errors import GatewayError
from gateway.traffic.routing import LiveCounts, ModelSplit, RoutingTable
from serving.traffic_table import TrafficTable
from tests.unit.test_core import catalog, infer, request

PLAN = {
    "version": "2",
    "steps": [10, 50, 100],
    "every_s": 60,
    "max_error_rate": 0.05,
    "max_p99_ms": 100,
    "min_requests": 10,
}


def counts(requests: int, failures: int = 0, ms: float = 5.0) -> list[object]:
    buckets = [0] * N_BUCKETS
    buckets[latency_bucket(ms)] = requests - failures
    return [requests, failures, buckets]


@given(
    st.dictionaries(st.sampled_from(["1", "2", "3", "4"]), st.integers(0, 100), min_size=1),
    st.sampled_from(["1", "2", "5"]),
    st.integers(1, 100),
)
def test_split_with_is_exact_whole_percents(base: dict[str, int], version: str, percent: int) -> None:
    if not any(w > 0 for v, w in base.items() if v != version) and percent < 100:
        with pytest.raises(PlanError):
            split_with(base, version, percent)
        return
    out = split_with(base, version, percent)
    assert sum(out.values()) == 100 and out[version] == percent
    assert all(w >= 0 for w in out.values())
    others = {v: w for v, w in base.items() if v != version and w > 0}
    for v, w in others.items():  # proportional, within one percent of the exact share
        assert abs(out[v] - (100 - percent) * w / sum(others.values())) < 1


def test_zero_and_hundred_are_exact() -> None:
    assert split_with({"1": 100}, "2", 100) == {"1": 0, "2": 100}
    assert split_with({"1": 90, "2": 10}, "2", 1) == {"1": 99, "2": 1}
    assert split_with({"1": 1, "3": 2}, "2", 97) == {"1": 1, "3": 2, "2": 97}


@pytest.mark.parametrize(
    "bad",
    [
        {**PLAN, "steps": []},
        {**PLAN, "steps": [50, 10]},
        {**PLAN, "steps": [0, 50]},
        {**PLAN, "steps": [50, 101]},
        {**PLAN, "every_s": 0},
        {**PLAN, "max_error_rate": 2},
        {**PLAN, "min_requests": -1},
        {**PLAN, "surprise": 1},
        {"steps": [5], "every_s": 1},
        {**PLAN, "steps": [12.5, 50]},
        {**PLAN, "steps": [True]},
        {**PLAN, "max_p99_ms": "fast"},
        {**PLAN, "min_requests": "many"},
    ],
)
def test_bad_plans_are_refused_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        RampPlan.parse(bad)


def ramp(now: float = 0.0) -> Ramp:
    return Ramp(RampPlan.parse(PLAN), {"1": 100}, 0, now)


def test_a_step_needs_its_time_and_its_evidence() -> None:
    r = ramp()
    assert r.weights() == {"1": 90, "2": 10}
    assert r.verdict(30)[0] == "hold"  # not yet every_s
    assert r.verdict(61)[0] == "hold" and "waiting for 10" in r.verdict(61)[1]  # no evidence
    r.window.add(*counts(10))  # type: ignore[arg-type]
    assert r.verdict(30)[0] == "hold"
    assert r.verdict(61)[0] == "advance"
    r.advance(61)
    assert r.weights() == {"1": 50, "2": 50} and r.window.requests == 0
    r.window.add(*counts(10))  # type: ignore[arg-type]
    r.advance(122)
    r.window.add(*counts(10))  # type: ignore[arg-type]
    assert r.verdict(183)[0] == "promote"


def test_a_guard_breach_rolls_back_before_the_step_ends() -> None:
    r = ramp()
    r.window.add(*counts(9, failures=1))  # type: ignore[arg-type]
    assert r.verdict(1)[0] == "hold"  # 9 requests: below min_requests, not judged yet
    r.window.add(*counts(1, failures=1))  # type: ignore[arg-type]
    action, why = r.verdict(1)
    assert action == "rollback" and "20.0%" in why and "5.0%" in why


def test_p99_guard() -> None:
    r = ramp()
    r.window.add(*counts(100, ms=3))  # type: ignore[arg-type]
    assert r.verdict(1)[0] == "hold"
    r.window.add(*counts(5, ms=400))  # type: ignore[arg-type]  # > 1% of requests slower than 100 ms
    assert r.verdict(1)[0] == "rollback"


def test_window_p99_is_interpolated_inside_its_bucket() -> None:
    w = Window()
    assert w.p99_ms() == 0.0
    w.add(*counts(99, ms=1.5))  # type: ignore[arg-type]
    w.add(*counts(1, ms=30))  # type: ignore[arg-type]
    assert w.p99_ms() == pytest.approx(2.0)  # rank 99 of 100: the top of the (1, 2] ms bucket
    w.add(*counts(1, ms=30))  # type: ignore[arg-type]
    assert w.p99_ms() == pytest.approx(20 + 30 * 0.99 / 2)  # rank 99.99: inside (20, 50] ms, which holds 2
    w.add(*counts(1, ms=20_000))  # type: ignore[arg-type]
    w.add(*counts(5, ms=20_000))  # type: ignore[arg-type]
    assert w.p99_ms() == float("inf")


def test_ramp_state_round_trips() -> None:
    r = ramp(5.0)
    r.window.add(*counts(3, failures=1))  # type: ignore[arg-type]
    back = Ramp.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


# --- the table ------------------------------------------------------------------------------------------


@pytest.fixture
async def table(tmp_path: Path) -> AsyncIterator[TrafficTable]:
    t = TrafficTable(str(tmp_path / "table.json"))
    yield t
    if t._ticker is not None:
        t._ticker.cancel()
        await asyncio.gather(t._ticker, return_exceptions=True)


async def test_a_ramp_steps_up_and_promotes(table: TrafficTable) -> None:
    await table.set_model("m", {"1": 100}, "op", "start")
    state = await table.start_ramp("m", PLAN, "op", "")
    assert state["models"]["m"] == {"1": 90, "2": 10} and state["ramps"]["m"]["percent"] == 10
    for expected in ({"1": 50, "2": 50}, {"1": 0, "2": 100}):
        await table.report("g1", {"m": {"2": counts(6), "1": counts(50, failures=50)}})  # v1's failures: ignored
        await table.report("g2", {"m": {"2": counts(6)}})
        table._evaluate(table.ramps["m"].step_started + 61 if "m" in table.ramps else 0)
        assert table.models["m"] == expected
    table._evaluate(10**10)
    assert table.models["m"] == {"1": 0, "2": 100} and "m" in table.ramps  # 100% too needs its evidence
    await table.report("g1", {"m": {"2": counts(10)}})
    table._evaluate(10**10)
    assert "m" not in table.ramps and table.models["m"] == {"2": 100}
    reasons = [e["reason"] for e in table.model_history("m")]
    assert "promoted" in reasons[-1] and all(e["who"] == "ramp" for e in table.model_history("m")[-2:])


async def test_a_failing_canary_rolls_back_by_itself(table: TrafficTable) -> None:
    await table.set_model("m", {"1": 80, "3": 20}, "op", "start")
    await table.start_ramp("m", PLAN, "op", "")
    assert table.models["m"] == {"1": 72, "3": 18, "2": 10}
    await table.report("g1", {"m": {"2": counts(10, failures=3)}})  # judged at once: no waiting for the step
    assert "m" not in table.ramps and table.models["m"] == {"1": 80, "3": 20}
    last = table.model_history("m")[-1]
    assert last["rollback"] and "error rate 30.0%" in last["reason"] and last["before"]["2"] == 10


async def test_an_operator_split_ends_the_ramp_and_rollback_undoes_it(table: TrafficTable) -> None:
    await table.set_model("m", {"1": 100}, "op", "")
    await table.start_ramp("m", PLAN, "op", "")
    await table.set_model("m", {"1": 70, "2": 30}, "op", "by hand")
    assert "m" not in table.ramps and "ended" in table.model_history("m")[-1]["ramp_ended"]
    await table.rollback("m", "op", "")
    assert table.models["m"] == {"1": 90, "2": 10}  # the split before the last change


async def test_rollback_with_nothing_to_go_back_to_is_refused(table: TrafficTable) -> None:
    with pytest.raises(PlanError):
        await table.rollback("m", "op", "")
    await table.set_model("m", {"1": 100}, "op", "")
    with pytest.raises(PlanError):
        await table.rollback("m", "op", "")


async def test_a_ramp_needs_a_split_or_a_base(table: TrafficTable) -> None:
    with pytest.raises(PlanError, match="no split"):
        await table.start_ramp("m", PLAN, "job", "")
    state = await table.start_ramp("m", {**PLAN, "base": {"1": 100}}, "job", "retrained")
    assert state["models"]["m"] == {"1": 90, "2": 10}
    with pytest.raises(PlanError, match="already ramping"):
        await table.start_ramp("m", {**PLAN, "version": "3"}, "job", "")


async def test_bad_changes_store_nothing(table: TrafficTable) -> None:
    for call in (
        table.set_model("m", {"1": 60}, "op", ""),
        table.set_shadows("m", {"2": 1.5}, "op", ""),
        table.start_ramp("m", {**PLAN, "steps": [50, 10]}, "op", ""),
    ):
        with pytest.raises(PlanError):
            await call
    assert table.revision == 0 and table.models == {} and table.shadows == {}


async def test_everything_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "table.json")
    first = TrafficTable(path)
    await first.set_model("m", {"1": 100}, "op", "")
    await first.set_shadows("m", {"3": 0.25}, "op", "mirror")
    await first.start_ramp("m", PLAN, "op", "")
    await first.report("g", {"m": {"2": counts(4)}})
    assert first._ticker is not None
    first._ticker.cancel()
    again = TrafficTable(path)
    assert again.revision == first.revision == 3
    assert (
        (again.models, again.shadows)
        == (first.models, first.shadows)
        == ({"m": {"1": 90, "2": 10}}, {"m": {"3": 0.25}})
    )
    assert again.ramps["m"].plan == first.ramps["m"].plan and again.ramps["m"].base == {"1": 100}
    assert again.ramps["m"].window.requests == 0  # live counts since the last change are not persisted
    assert [e["reason"] for e in again.model_history("m")] == [e["reason"] for e in first.model_history("m")]


async def test_waiters_wake_on_a_change(table: TrafficTable) -> None:
    waiter = asyncio.create_task(table.wait_newer(0, 30))
    await asyncio.sleep(0)
    await table.set_shadows("m", {"2": 1.0}, "op", "")
    assert (await asyncio.wait_for(waiter, 5))["shadows"] == {"m": {"2": 1.0}}
    await table.set_shadows("m", {}, "op", "stop")
    assert table.get()["shadows"] == {}


class SmokeTested:
    """y = 2x; an input starting with a negative number fails (a smoke test that finds a fault)."""

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if x[0, 0] < 0:
            raise RuntimeError("broken by the smoke test")
        return {"y": x * 2, "v": np.full(len(x), float(version), dtype=np.float32)}


def applied(plane: DataPlane, state: dict[str, Any]) -> None:
    plane.router.apply(
        RoutingTable(
            revision=state["revision"],
            models={m: ModelSplit(weights=w) for m, w in state["models"].items()},
            ramps=state["ramps"],
        )
    )


async def test_pinned_calls_alone_never_advance_or_roll_back_a_step(table: TrafficTable) -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "READY"), batching=False), SmokeTested())
    await table.set_model("m", {"1": 100}, "op", "")
    applied(plane, await table.start_ramp("m", PLAN, "op", ""))
    assert plane.router.ramped == {"m": "2"}
    # Smoke tests of the canary, by URL or model_version: four times the step's min_requests, a fifth failing.
    for i in range(40):
        with contextlib.suppress(GatewayError):
            await infer(plane, request(version="2", start=-1.0 if i % 5 == 0 else float(i)))
    await table.report("g1", plane.live_counts.take())
    assert "m" in table.ramps, table.model_history("m")[-1]["reason"]
    table._evaluate(table.ramps["m"].step_started + 61)
    assert table.models["m"] == {"1": 90, "2": 10}, table.model_history("m")[-1]["reason"]  # nor advanced
    ramp = table.get()["ramps"]["m"]
    assert ramp["step"] == 0
    assert ramp["live"]["requests"] == 0 and ramp["live"]["pinned"] == {"requests": 40, "failures": 8}
    assert "has 0; 40 pinned not counted" in table.ramps["m"].verdict(table.ramps["m"].step_started + 61)[1]

    # Requests the split sends to the canary are its evidence.
    canary = 0
    while canary < PLAN["min_requests"]:  # type: ignore[operator]
        canary += (await infer(plane, request(start=1.0))).version == "2"
    await table.report("g1", plane.live_counts.take())
    assert table.ramps["m"].window.requests == canary
    table._evaluate(table.ramps["m"].step_started + 61)
    assert table.models["m"] == {"1": 50, "2": 50}


def test_live_counts_keep_pinned_requests_apart_and_survive_a_failed_report() -> None:
    live = LiveCounts()
    for role, code in (
        ("canary", "OK"),
        ("canary", "INTERNAL"),
        ("pinned", "OK"),
        ("pinned", "UNAVAILABLE"),
        ("pinned", "INVALID_ARGUMENT"),
        ("primary", "OK"),
    ):
        live.add("m", "2", code, 3.0, role)
    taken = live.take()
    assert taken == {"m": {"2": counts(2, 1, 3.0), "2" + PINNED_SUFFIX: [3, 1]}} and live.take() == {}
    live.merge(taken)
    live.add("m", "2", "OK", 3.0, "pinned")
    assert live.take() == {"m": {"2": counts(2, 1, 3.0), "2" + PINNED_SUFFIX: [4, 1]}}
