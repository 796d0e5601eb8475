"""Shadows, ramps, promote and rollback through the admin API, stored in the real table state (no Ray)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.manifest import Manifest, TensorSpecModel
from contract.ramp import PlanError
from gateway.core import DataPlane
from gateway.doors.admin import AdminApi
from gateway.errors import Code, GatewayError
from gateway.plane.catalog import VersionInfo
from gateway.settings import BatchingOverride
from gateway.traffic.control import TrafficControl, table_from
from serving.traffic_table import TrafficTable
from tests.unit.test_traffic import catalog


class StateStore:
    """The table state behind the admin API, refusals mapped the way gateway.dispatch.RoutingTable maps them."""

    def __init__(self, state: TrafficTable) -> None:
        self.state = state

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            result = getattr(self.state, method)(*args)
            return await result if hasattr(result, "__await__") else result
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None

    async def get(self) -> dict[str, Any]:
        return await self._call("get")  # type: ignore[no-any-return]

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        return await self._call("set_model", model, weights, who, reason)  # type: ignore[no-any-return]

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]:
        return await self._call("set_shadows", model, shadows, who, reason)  # type: ignore[no-any-return]

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        return await self._call("start_ramp", model, plan, who, reason)  # type: ignore[no-any-return]

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]:
        return await self._call("rollback", model, who, reason)  # type: ignore[no-any-return]

    async def history(self, model: str) -> list[dict[str, Any]]:
        return await self._call("model_history", model)  # type: ignore[no-any-return]


Setup = tuple[httpx.AsyncClient, DataPlane, TrafficTable, list[set[tuple[str, str]]]]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    plane = DataPlane(catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING")), _NoDispatch())
    state = TrafficTable(str(tmp_path / "table.json"))
    asked: list[set[tuple[str, str]]] = []

    async def discover(named: set[tuple[str, str]]) -> None:
        asked.append(named)
        if ("m", "4") in named:  # the repository has a version 4 that appeared after start-up
            spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 1])]
            info = VersionInfo.from_manifest(
                Manifest(name="m", version="4", runtime="array", inputs=spec, outputs=spec), BatchingOverride()
            )
            info.state = "READY"
            plane.add_version(info)

    api = AdminApi(TrafficControl(plane, StateStore(state), discover), "s3cret")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api),
        base_url="http://admin",
        headers={"authorization": "Bearer s3cret", "x-operator": "alice"},
    ) as client:
        yield client, plane, state, asked
    if state._ticker is not None:
        state._ticker.cancel()


class _NoDispatch:
    async def infer(self, model: str, version: str, inputs: Any) -> Any:
        raise AssertionError("not called")


async def test_shadows_are_set_applied_and_cleared(setup: Setup) -> None:
    client, plane, state, _ = setup
    r = await client.put("/admin/traffic/m/shadows", json={"shadows": {"2": 0.5}, "reason": "try v2"})
    assert r.status_code == 200, r.json()
    assert plane.router.shadows == {"m": (("2", 0.5),)}
    assert (await client.get("/admin/traffic/m")).json()["shadows"] == {"2": 0.5}
    assert (await client.put("/admin/traffic/m/shadows", json={"shadows": {}})).status_code == 200
    assert plane.router.shadows == {} and state.shadows == {}
    assert [e["who"] for e in state.model_history("m")] == ["alice", "alice"]


@pytest.mark.parametrize(
    ("shadows", "status", "fragment"),
    [
        ({"9": 1.0}, 404, "no version '9'"),
        ({"3": 1.0}, 400, "not ready"),
        ({"2": 1.5}, 400, "(0, 1]"),
        ({"2": "x"}, 400, "shadows.2"),
    ],
)
async def test_bad_shadows_change_nothing(setup: Setup, shadows: dict[str, Any], status: int, fragment: str) -> None:
    client, plane, state, _ = setup
    r = await client.put("/admin/traffic/m/shadows", json={"shadows": shadows})
    assert r.status_code == status and fragment in r.json()["error"], r.json()
    assert state.revision == 0 and plane.router.shadows == {}


async def test_a_ramp_from_the_default_version_then_rollback(setup: Setup) -> None:
    client, plane, state, _ = setup
    r = await client.post(
        "/admin/traffic/m/ramp", json={"version": "1", "steps": [5, 50, 100], "every_s": 60, "max_error_rate": 0.01}
    )
    assert r.status_code == 200, r.json()
    # No split yet: unpinned requests went to the newest ready version (2), so the ramp starts from it.
    assert plane.router.table.models["m"].weights == {"2": 95, "1": 5}
    assert plane.router.ramped == {"m": "1"}
    assert plane.router.choose("m", None, "some-key").role in ("primary", "canary")
    ramp = (await client.get("/admin/traffic/m")).json()["ramp"]
    assert ramp["version"] == "1" and ramp["percent"] == 5 and ramp["base"] == {"2": 100}
    r = await client.post("/admin/traffic/m/rollback", json={"reason": "not today"})
    assert r.status_code == 200 and plane.router.table.models["m"].weights == {"2": 100}
    assert plane.router.ramped == {} and state.model_history("m")[-1]["reason"] == "not today"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"version": "1", "steps": [50, 5], "every_s": 60}, 400, "rising"),
        ({"version": "1", "steps": [5], "every_s": 0}, 400, "every_s"),
        ({"version": "3", "steps": [5], "every_s": 60}, 400, "not ready"),
        ({"version": "9", "steps": [5], "every_s": 60}, 404, "no version '9'"),
        ({"version": "1", "steps": [5], "every_s": 60, "max_error_rate": 5}, 400, "max_error_rate"),
    ],
)
async def test_bad_ramps_change_nothing(setup: Setup, body: dict[str, Any], status: int, fragment: str) -> None:
    client, plane, state, _ = setup
    await client.put("/admin/traffic/m", json={"weights": {"2": 100}})
    r = await client.post("/admin/traffic/m/ramp", json=body)
    assert r.status_code == status and fragment in r.json()["error"], r.json()
    assert state.revision == 1 and state.ramps == {} and plane.router.table.models["m"].weights == {"2": 100}


async def test_promote_ends_a_ramp(setup: Setup) -> None:
    client, plane, state, _ = setup
    await client.put("/admin/traffic/m", json={"weights": {"2": 100}})
    await client.post("/admin/traffic/m/ramp", json={"version": "1", "steps": [10, 100], "every_s": 600})
    r = await client.post("/admin/traffic/m/promote", json={"version": "1"})
    assert r.status_code == 200 and plane.router.table.models["m"].weights == {"1": 100}
    assert state.ramps == {} and plane.router.ramped == {}
    assert (await client.post("/admin/traffic/m/rollback", json={})).json()["models"]["m"] == {"2": 90, "1": 10}


async def test_a_version_added_to_the_repository_after_start_up_is_found(setup: Setup) -> None:
    client, plane, _, asked = setup
    r = await client.put("/admin/traffic/m", json={"weights": {"2": 50, "4": 50}})
    assert r.status_code == 200, r.json()
    assert ("m", "4") in asked[-1] and plane.router.table.models["m"].weights == {"2": 50, "4": 50}
    r = await client.put("/admin/traffic/m", json={"weights": {"2": 50, "5": 50}})
    assert r.status_code == 404 and "no version '5'" in r.json()["error"]


async def test_unknown_routes_and_rollback_of_an_unknown_model(setup: Setup) -> None:
    client, *_ = setup
    assert (await client.post("/admin/traffic/m/explode", json={})).status_code == 404
    assert (await client.get("/admin/other")).status_code == 404
    assert (await client.post("/admin/traffic/nope/rollback", json={})).status_code == 404


async def test_models_this_gateway_does_not_serve_are_left_to_others(setup: Setup) -> None:
    client, plane, state, _ = setup
    await state.set_model("elsewhere", {"7": 100}, "other-gateway", "")  # a model only another gateway serves
    r = await client.put("/admin/traffic/m", json={"weights": {"1": 30, "2": 70}})
    assert r.status_code == 200, r.json()
    assert plane.router.table.models["m"].weights == {"1": 30, "2": 70} and "elsewhere" not in plane.router.table.models
    assert state.models["elsewhere"] == {"7": 100}


def test_applicable_keeps_current_routes_for_an_entry_it_cannot_apply_yet() -> None:
    from gateway.traffic.routing import ModelSplit, RoutingTable, applicable

    cat = catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING"))
    current = RoutingTable(models={"m": ModelSplit(weights={"1": 100})})
    wanted = RoutingTable(
        revision=5, models={"m": ModelSplit(weights={"1": 50, "3": 50}), "other": ModelSplit(weights={"9": 100})}
    )
    table, problems = applicable(wanted, cat, current)
    assert table.revision == 5 and table.models == current.models and "not ready" in problems[0]
    cat.set_state("m", "3", "READY")
    table, problems = applicable(wanted, cat, current)
    assert table.models == {"m": ModelSplit(weights={"1": 50, "3": 50})} and problems == []


async def test_ramping_the_newest_version_with_no_split_starts_from_the_next_newest(setup: Setup) -> None:
    client, plane, _, _ = setup
    r = await client.post("/admin/traffic/m/ramp", json={"version": "2", "steps": [5, 100], "every_s": 60})
    assert r.status_code == 200, r.json()
    assert plane.router.table.models["m"].weights == {"1": 95, "2": 5}


async def test_an_older_revision_never_replaces_a_newer_one(setup: Setup) -> None:
    client, plane, state, _ = setup
    old = dict(state.get())
    await client.put("/admin/traffic/m", json={"weights": {"1": 10, "2": 90}})
    assert plane.router.apply(table_from({**old, "models": {"m": {"1": 100}}})) is False
    assert plane.router.table.models["m"].weights == {"1": 10, "2": 90}


async def test_a_shadow_must_be_ready_when_added_but_may_go_unready_later(setup: Setup) -> None:
    client, plane, _, _ = setup
    assert (await client.put("/admin/traffic/m/shadows", json={"shadows": {"2": 1.0}})).status_code == 200
    plane.catalog.set_state("m", "2", "LOADING")
    r = await client.put("/admin/traffic/m", json={"weights": {"1": 100}})
    assert r.status_code == 200, r.json()  # the unready shadow does not hold the split down
    assert plane.router.shadows == {"m": (("2", 1.0),)}
