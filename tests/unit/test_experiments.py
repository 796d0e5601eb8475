"""Experiments without Ray: plans, scoring outcomes, the join over log files, the table's decisions (fake clock),
the admin API and the CLI's status and report."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from contract.experiments.experiment import ArmCounts
from contract.experiments.outcomes import OutcomeError, score
from contract.experiments.plan import ExperimentPlan
from contract.experiments.stats import Moments
from contract.ramp import PlanError
from gateway.core import DataPlane
from gateway.doors.admin import AdminApi
from gateway.traffic.control import TrafficControl
from gateway.traffic.experiment_cli import render, write_report
from gateway.traffic.outcomes import ROOT_ID_FILE, OutcomeJoiner, OutcomeReporter, root_id
from serving.traffic_table import TrafficTable
from tests.unit.test_admin_traffic import StateStore, _NoDispatch
from tests.unit.test_traffic import catalog

PLAN = {"arms": {"1": 50, "2": 50}, "metric": "accuracy", "min_samples": 100, "max_samples": 100_000}


# --- plans --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"arms": {"1": 100}}, "at least two arms"),
        ({"arms": {"1": 50, "2": 40}}, "summing to 100"),
        ({"arms": {"1": 100, "2": 0}}, "weight above 0"),
        ({"control": "3"}, "not one of the arms"),
        ({"metric": "auc"}, "unknown metric"),
        ({"alpha": 0.7}, "alpha"),
        ({"mde": -1}, "mde"),
        ({"max_samples": None}, "give the experiment an end"),
        ({"max_samples": 10}, "at least min_samples"),
        ({"surprise": 1}, "unknown experiment field"),
        ({"guard_metric": "nope"}, "unknown metric"),
    ],
)
def test_bad_plans_say_what_is_wrong(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PlanError, match=fragment):
        ExperimentPlan.parse({**PLAN, **change})


def test_plan_defaults_and_direction() -> None:
    p = ExperimentPlan.parse({**PLAN, "metric": "error_rate"})
    assert p.control == "1" and p.treatments == ["2"] and not p.higher_is_better and p.max_error_rate == 0.05
    assert ExperimentPlan.parse({**PLAN, "max_error_rate": None}).max_error_rate is None
    three = ExperimentPlan.parse({**PLAN, "arms": {"1": 40, "2": 30, "3": 30}})
    assert three.arm_alpha == pytest.approx(0.025)
    assert ExperimentPlan.from_dict(json.loads(json.dumps(three.to_dict()))) == three


# --- outcomes -----------------------------------------------------------------------------------------


RECORD = {
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [3, 2], "data": [0.9, 0.1, 0.2, 0.8, 0.6, 0.4]},
        {"name": "label", "datatype": "INT64", "shape": [3], "data": [0, 1, 0]},
    ]
}


def test_scores_per_row() -> None:
    assert score("accuracy", RECORD, [0, 1, 1]).tolist() == [1, 1, 0]
    assert score("error_rate", RECORD, [0, 1, 1]).tolist() == [0, 0, 1]
    assert score("log_loss", RECORD, [0, 1, 1]) == pytest.approx(-np.log([0.9, 0.8, 0.4]))
    assert score("accuracy", RECORD, [0, 0, 0], output="probabilities").tolist() == [1, 0, 1]
    assert score("mean", {}, 12.5).tolist() == [12.5]
    with pytest.raises(OutcomeError, match="2 label value"):
        score("accuracy", RECORD, [0, 1])
    with pytest.raises(OutcomeError, match="no outputs"):
        score("accuracy", {"outputs": []}, 1)
    with pytest.raises(OutcomeError, match="outside"):
        score("log_loss", RECORD, [0, 1, 2])


# --- the join over log files ----------------------------------------------------------------------------


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for r in records:
            f.write(orjson.dumps({"format_version": 1, **r}) + b"\n")


def request(rid: str, version: str, t: float, code: str = "OK", reason: str = "weighted split") -> dict[str, Any]:
    return {
        "request_id": rid,
        "time": t,
        "model": "m",
        "version": version,
        "role": "primary",
        "routing_reason": reason,
        "code": code,
        "total_ms": 3.0,
        **RECORD,
    }


def label(rid: str, value: Any, t: float) -> dict[str, Any]:
    return {"kind": "feedback", "request_id": rid, "time": t, "model": "m", "label": value}


def test_the_join_scores_labelled_requests_from_every_gateway(tmp_path: Path) -> None:
    seg = "segment-0000000001.jsonl"
    write_lines(tmp_path / "gw1" / seg, [request("old", "1", 50.0)])  # before the experiment
    joiner = OutcomeJoiner(tmp_path)
    joiner.follow(
        {"m": {"id": "m@100", "state": "running", "started": 100.0, "plan": ExperimentPlan.parse(PLAN).to_dict()}}
    )
    write_lines(
        tmp_path / "gw1" / seg,
        [request("a", "1", 101.0), request("p", "2", 101.0, reason="version named by the request")],
    )
    write_lines(tmp_path / "gw2" / seg, [request("b", "2", 102.0), request("c", "2", 102.0, code="INTERNAL")])
    write_lines(tmp_path / "feedback" / "gw2" / seg, [label("a", [0, 1, 1], 103.0), label("early", [0, 1, 0], 103.0)])
    write_lines(tmp_path / "feedback" / "gw1" / seg, [label("old", [0, 1, 0], 103.0), label("p", [0, 1, 0], 103.0)])
    snap = joiner.poll()["m"]
    assert snap["id"] == "m@100"
    one, two = ArmCounts.from_dict(snap["arms"]["1"]), ArmCounts.from_dict(snap["arms"]["2"])
    assert one.primary == Moments(3, 2.0, 2.0) and one.requests == 1
    assert two.primary.n == 0 and two.requests == 2 and two.failures == 1  # pinned 'p' is not evidence
    # A label read before its request's record waits for it; a later poll joins them.
    write_lines(tmp_path / "gw1" / seg, [request("early", "2", 104.0)])
    write_lines(tmp_path / "feedback" / "gw1" / seg, [label("b", [1, 1, 1], 105.0)])
    two = ArmCounts.from_dict(joiner.poll()["m"]["arms"]["2"])
    assert two.primary == Moments(6, 4.0, 4.0)
    joiner.follow({})
    assert joiner.poll() == {}


# --- the table decides ----------------------------------------------------------------------------------


@pytest.fixture
async def table(tmp_path: Path) -> AsyncIterator[TrafficTable]:
    t = TrafficTable(str(tmp_path / "table.json"))
    yield t
    if t._ticker is not None:
        t._ticker.cancel()
        await asyncio.gather(t._ticker, return_exceptions=True)


def arm(n: int, rate: float, requests: int | None = None, failures: int = 0) -> dict[str, Any]:
    right = round(n * rate)
    counts = ArmCounts(Moments(n, right, right), Moments(), requests or n, failures, (requests or n,) + (0,) * 13)
    return counts.to_dict()


async def report(t: TrafficTable, arms: dict[str, dict[str, Any]], model: str = "m") -> None:
    await t.report_outcomes("g1", {model: {"id": t.experiments[model].id, "arms": arms}})


async def test_a_better_arm_is_promoted_with_the_numbers_in_the_history(table: TrafficTable) -> None:
    await table.set_model("m", {"1": 100}, "op", "")
    state = await table.start_experiment("m", {**PLAN, "mde": 0.02}, "op", "")
    assert state["models"]["m"] == {"1": 50, "2": 50} and state["experiments"]["m"]["state"] == "running"
    with pytest.raises(PlanError, match="already runs"):
        await table.start_experiment("m", PLAN, "op", "")
    with pytest.raises(PlanError, match="running an experiment"):
        await table.start_ramp("m", {"version": "2", "steps": [50, 100], "every_s": 1}, "op", "")
    await report(table, {"1": arm(200, 0.90), "2": arm(200, 0.92)})
    assert table.experiments["m"].running  # a small lift on few samples: not yet
    await report(table, {"1": arm(5000, 0.90), "2": arm(5000, 0.95)})
    e = table.experiments["m"]
    assert e.state == "promoted" and table.models["m"] == {"2": 100}
    last = table.model_history("m")[-1]
    assert last["who"] == "experiment" and "promoted" in last["reason"] and last["after"] == {"2": 100}
    assert last["experiment"]["arms"]["2"]["lift"]["estimate"] == pytest.approx(0.05)
    assert last["experiment"]["arms"]["2"]["lift"]["interval"][0] > 0


async def test_a_worse_arm_is_stopped_and_its_traffic_returns_to_control(table: TrafficTable) -> None:
    await table.start_experiment("m", {**PLAN, "arms": {"1": 40, "2": 30, "3": 30}}, "op", "")
    await report(table, {"1": arm(5000, 0.95), "2": arm(5000, 0.90), "3": arm(5000, 0.95)})
    e = table.experiments["m"]
    assert e.running and e.arm_states == {"1": "control", "2": "stopped", "3": "running"}
    assert table.models["m"] == {"1": 70, "3": 30}
    assert "significantly worse" in table.model_history("m")[-1]["reason"]
    await report(table, {"1": arm(9000, 0.95), "2": arm(5000, 0.90), "3": arm(9000, 0.80)})
    assert e.state == "stopped" and table.models["m"] == {"1": 100}


async def test_a_broken_guardrail_stops_an_arm_before_any_label(table: TrafficTable) -> None:
    await table.start_experiment("m", PLAN, "op", "")
    await report(table, {"1": arm(0, 0, requests=100), "2": arm(0, 0, requests=100, failures=20)})
    assert table.experiments["m"].arm_states["2"] == "stopped" and table.models["m"] == {"1": 100}
    assert "server errors 20.0%" in table.model_history("m")[-2]["reason"]


async def test_no_result_by_the_end_changes_nothing_and_says_so(table: TrafficTable) -> None:
    await table.start_experiment("m", {**PLAN, "max_samples": 1000, "max_duration_s": 60}, "op", "")
    await report(table, {"1": arm(1000, 0.9), "2": arm(1000, 0.9)})
    e = table.experiments["m"]
    assert e.state == "inconclusive" and table.models["m"] == {"1": 50, "2": 50}
    shown = table.get()["experiments"]["m"]["arms"]
    assert shown["1"]["state"] == "control" and shown["2"]["state"] == "ended"  # no arm of an ended one runs
    last = table.model_history("m")[-1]
    assert last["who"] == "experiment" and "nothing changed" in last["reason"] and last["before"] == last["after"]
    # And by time, with the clock passed in.
    await table.start_experiment("m", {**PLAN, "max_duration_s": 60}, "op", "")
    table._judge_experiments(table.experiments["m"].started + 61)
    assert table.experiments["m"].state == "inconclusive"


async def test_operator_changes_end_it_and_the_state_survives_a_restart(table: TrafficTable) -> None:
    await table.start_experiment("m", PLAN, "op", "")
    await report(table, {"1": arm(300, 0.9), "2": arm(300, 0.91)})
    back = TrafficTable(str(table.path))
    assert back.experiments["m"].to_dict() == table.experiments["m"].to_dict()
    await table.set_model("m", {"1": 100}, "alice", "enough")
    assert table.experiments["m"].state == "ended" and "experiment_ended" in table.model_history("m")[-1]
    with pytest.raises(PlanError, match="runs no experiment"):
        await table.stop_experiment("m", "alice", "")


def test_one_gateway_per_log_root_holds_the_join_lease_until_it_stops_or_lets_it_lapse(tmp_path: Path) -> None:
    t = TrafficTable(str(tmp_path / "table.json"))
    assert t.claim_join("gw1", "root", 60) and not t.claim_join("gw2", "root", 60) and t.claim_join("gw1", "root", 60)
    assert t.claim_join("gw3", "other root", 60)  # gateways writing elsewhere join their own root
    t.release_join("gw2", "root")  # not the holder: nothing changes
    assert not t.claim_join("gw2", "root", 60)
    t._joiners["root"] = ("gw1", time.monotonic() - 1.0)  # gw1 stopped renewing and its lease ran out
    assert t.claim_join("gw2", "root", 60) and not t.claim_join("gw1", "root", 60)
    t.release_join("gw2", "root")
    assert t.claim_join("gw1", "root", 60)


def test_a_log_root_has_one_id_for_everyone_who_sees_it(tmp_path: Path) -> None:
    first = root_id(tmp_path / "logs")
    assert len(first) == 32 and root_id(tmp_path / "logs") == first  # made once, then read
    assert root_id(tmp_path / "elsewhere") != first
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [ROOT_ID_FILE]  # no temporary file is left
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "logs"  # cannot be created, even by root
    assert root_id(unwritable) == str(unwritable.resolve())


async def test_only_the_lease_holder_joins_and_a_successor_joins_from_the_start(
    table: TrafficTable, tmp_path: Path
) -> None:
    root, seg = tmp_path / "logs", "segment-0000000001.jsonl"
    store = ExperimentStore(table)
    first, second = (OutcomeReporter(OutcomeJoiner(root), store, g, 1.0) for g in ("gw1", "gw2"))
    await table.start_experiment("m", PLAN, "op", "")
    now = time.time() + 1
    write_lines(root / "gw1" / seg, [request(f"a{i}", "1", now) for i in range(3)])
    write_lines(root / "gw2" / seg, [request(f"b{i}", "2", now) for i in range(2)])
    write_lines(root / "feedback" / "gw1" / seg, [label(f"a{i}", [0, 1, 1], now) for i in range(3)])
    await first.step()
    await second.step()
    assert store.reports == ["gw1"] and first.joining and not second.joining and not second.joiner.joins
    arms = table.experiments["m"].counts
    assert arms["1"].requests == 3 and arms["1"].primary.n == 9 and arms["2"].requests == 2
    await first.stop()  # hands the lease over
    write_lines(root / "gw2" / seg, [request("b9", "2", now)])
    await second.step()
    assert store.reports == ["gw1", "gw2"] and second.joining
    arms = table.experiments["m"].counts  # the successor read both logs from the experiment's start
    assert arms["1"].requests == 3 and arms["1"].primary.n == 9 and arms["2"].requests == 3
    await table.stop_experiment("m", "op", "")
    await second.step()  # nothing runs: no claim, no join, no report
    assert store.reports == ["gw1", "gw2"] and not second.joining and not second.joiner.joins


async def test_a_long_read_keeps_the_lease_while_it_runs(table: TrafficTable, tmp_path: Path) -> None:
    store = ExperimentStore(table)
    claims: list[str] = []
    claim = store.claim_join

    async def counted(gateway_id: str, root: str, lease_s: float) -> bool:
        claims.append(gateway_id)
        return await claim(gateway_id, root, lease_s)

    store.claim_join = counted  # type: ignore[method-assign]
    reporter = OutcomeReporter(OutcomeJoiner(tmp_path / "logs"), store, "gw1", 0.05)

    def slow_poll() -> dict[str, Any]:
        time.sleep(0.4)  # eight intervals
        return {}

    reporter.joiner.poll = slow_poll  # type: ignore[method-assign]
    await table.start_experiment("m", PLAN, "op", "")
    await reporter.step()
    assert len(claims) >= 2 and set(claims) == {"gw1"}  # the claim before the read, renewed during it
    assert store.reports == ["gw1"]


# --- admin API and CLI ----------------------------------------------------------------------------------


class ExperimentStore(StateStore):
    def __init__(self, state: TrafficTable) -> None:
        super().__init__(state)
        self.reports: list[str] = []  # which gateway sent each outcome report, in order

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        return await self._call("start_experiment", model, plan, who, reason)  # type: ignore[no-any-return]

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]:
        return await self._call("stop_experiment", model, who, reason)  # type: ignore[no-any-return]

    async def experiment(self, model: str) -> dict[str, Any] | None:
        return await self._call("experiment", model)  # type: ignore[no-any-return]

    async def report_outcomes(self, gateway_id: str, snapshots: dict[str, Any]) -> None:
        self.reports.append(gateway_id)
        await self._call("report_outcomes", gateway_id, snapshots)

    async def claim_join(self, gateway_id: str, root_id: str, lease_s: float) -> bool:
        return await self._call("claim_join", gateway_id, root_id, lease_s)  # type: ignore[no-any-return]

    async def release_join(self, gateway_id: str, root_id: str) -> None:
        await self._call("release_join", gateway_id, root_id)


async def test_admin_api_starts_shows_and_stops_an_experiment(table: TrafficTable, tmp_path: Path) -> None:
    plane = DataPlane(catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING")), _NoDispatch())
    api = AdminApi(TrafficControl(plane, ExperimentStore(table)), "s3cret")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://a", headers={"authorization": "Bearer s3cret"}
    ) as client:
        assert (await client.get("/admin/experiments/m")).status_code == 404
        bad = await client.post("/admin/experiments/m", json={**PLAN, "arms": {"1": 50, "3": 50}})
        assert bad.status_code == 400 and "not ready" in bad.json()["error"]
        bad = await client.post("/admin/experiments/m", json={**PLAN, "alpha": 2})
        assert bad.status_code == 400 and "alpha" in bad.json()["error"]
        r = await client.post("/admin/experiments/m", json={**PLAN, "reason": "v2 on accuracy"})
        assert r.status_code == 200, r.text
        assert plane.routing_table.models["m"].weights == {"1": 50, "2": 50}
        await report(table, {"1": arm(400, 0.9), "2": arm(400, 0.93)})
        status = (await client.get("/admin/experiments/m")).json()
        assert status["arms"]["2"]["n"] == 400 and status["timeline"]
        text = render(status)
        assert "treatment" in text and "running" in text
        json_path, png_path = write_report(status, tmp_path / "report")
        assert json.loads(json_path.read_text())["model"] == "m" and png_path.read_bytes()[:4] == b"\x89PNG"
        r = await client.post("/admin/experiments/m/stop", json={"reason": "campaign over"})
        assert r.status_code == 200 and plane.routing_table.models["m"].weights == {"1": 100}
        assert (await client.post("/admin/experiments/m/stop", json={})).status_code == 400
