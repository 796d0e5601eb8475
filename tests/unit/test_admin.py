"""The admin API: token on every call, validation before anything is stored, atomic apply, audit history."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.core import DataPlane
from gateway.doors.admin import AdminApi
from gateway.traffic.control import TrafficControl
from tests.unit.test_traffic import catalog


class FakeStore:
    def __init__(self) -> None:
        self.revision = 0
        self.models: dict[str, dict[str, int]] = {}
        self.log: list[dict[str, Any]] = []

    async def get(self) -> dict[str, Any]:
        return {"revision": self.revision, "models": dict(self.models)}

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        self.log.append(
            {
                "model": model,
                "before": self.models.get(model),
                "after": weights,
                "who": who,
                "reason": reason,
                "revision": self.revision + 1,
            }
        )
        self.models[model] = weights
        self.revision += 1
        return await self.get()

    async def history(self, model: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e["model"] == model]


class NoDispatch:
    async def infer(self, model: str, version: str, inputs: Any) -> Any:
        raise AssertionError("not called")


@pytest.fixture
def setup() -> tuple[httpx.AsyncClient, DataPlane, FakeStore]:
    plane = DataPlane(catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING")), NoDispatch())
    store = FakeStore()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=AdminApi(TrafficControl(plane, store), "s3cret")),
        base_url="http://admin",
        headers={"authorization": "Bearer s3cret"},
    )
    return client, plane, store


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "s3cret", "Bearer s3cret "])
async def test_every_call_needs_the_token(
    setup: tuple[httpx.AsyncClient, DataPlane, FakeStore], auth: str | None
) -> None:
    client, plane, store = setup
    headers = {"authorization": auth} if auth is not None else {}
    client.headers.pop("authorization")
    for method, path in (("GET", "/admin/traffic"), ("PUT", "/admin/traffic/m"), ("GET", "/admin/traffic/m/history")):
        r = await client.request(method, path, headers=headers, json={"weights": {"1": 100}})
        assert r.status_code == 401 and "token" in r.json()["error"]
    assert store.log == [] and plane.router.table.models == {}


Setup = tuple[httpx.AsyncClient, DataPlane, FakeStore]


async def test_a_valid_change_is_stored_audited_and_applied(setup: Setup) -> None:
    client, plane, _ = setup
    r = await client.put(
        "/admin/traffic/m", json={"weights": {"1": 90, "2": 10}, "reason": "canary"}, headers={"x-operator": "alice"}
    )
    assert r.status_code == 200 and r.json() == {"revision": 1, "models": {"m": {"1": 90, "2": 10}}}
    assert plane.router.table.models["m"].weights == {"1": 90, "2": 10}
    history = (await client.get("/admin/traffic/m/history")).json()
    assert history == [
        {"model": "m", "before": None, "after": {"1": 90, "2": 10}, "who": "alice", "reason": "canary", "revision": 1}
    ]
    assert (await client.get("/admin/traffic/m")).json()["weights"] == {"1": 90, "2": 10}


@pytest.mark.parametrize(
    ("path", "weights", "status", "fragment"),
    [
        ("/admin/traffic/m", {"1": 90, "2": 20}, 400, "sum to 100"),
        ("/admin/traffic/m", {"1": 50, "9": 50}, 404, "no version '9'"),
        ("/admin/traffic/m", {"1": 50, "3": 50}, 400, "not ready"),
        ("/admin/traffic/nope", {"1": 100}, 404, "unknown model"),
    ],
)
async def test_an_invalid_change_is_refused_and_changes_nothing(
    setup: tuple[httpx.AsyncClient, DataPlane, FakeStore],
    path: str,
    weights: dict[str, int],
    status: int,
    fragment: str,
) -> None:
    client, plane, store = setup
    await client.put("/admin/traffic/m", json={"weights": {"1": 100}})
    r = await client.put(path, json={"weights": weights})
    assert r.status_code == status and fragment in r.json()["error"], r.json()
    assert store.models == {"m": {"1": 100}} and plane.router.table.models["m"].weights == {"1": 100}
