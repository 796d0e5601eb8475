"""The HTTP door's Triton extensions with an in-process ASGI client: routes, methods, JSON shapes, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.core import DataPlane
from gateway.doors.http import HttpDoor
from gateway.plane.catalog import Catalog
from gateway.plane.shm import SharedMemory
from tests.unit.test_http_door import FakeDispatcher, versions

TOKEN = "tok"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    plane = DataPlane(Catalog(versions()), FakeDispatcher(), shared_memory=SharedMemory(root=str(tmp_path)))
    door = HttpDoor(plane, max_body_bytes=1 << 20, max_elements=1 << 16, default_timeout_s=30.0, admin_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as c:
        yield c
    await plane.close()


async def test_config_and_stats_routes(client: httpx.AsyncClient) -> None:
    model = (await client.post("/v2/repository/index")).json()[0]["name"]
    config = (await client.get(f"/v2/models/{model}/config")).json()
    assert config["name"] == model and "input" in config and "instance_group" in config
    stats = (await client.get(f"/v2/models/{model}/stats")).json()["model_stats"]
    assert stats and all(s["name"] == model for s in stats)
    assert (await client.get("/v2/models/stats")).status_code == 200
    assert (await client.get("/v2/models/nope/config")).status_code == 404
    assert (await client.post(f"/v2/models/{model}/config")).status_code == 405


async def test_shared_memory_routes_check_the_method_before_acting(client: httpx.AsyncClient, tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    r = await client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/k", "byte_size": 32})
    assert r.status_code == 200, r.text
    assert (await client.get("/v2/systemsharedmemory/region/r/unregister")).status_code == 405
    status = (await client.get("/v2/systemsharedmemory/status")).json()
    assert status == [{"name": "r", "key": "/k", "offset": 0, "byte_size": 32}]  # still registered
    again = await client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/k", "byte_size": 32})
    assert again.status_code == 409
    bad = await client.post("/v2/systemsharedmemory/region/s/register", json={"key": "/k", "byte_size": -1})
    assert bad.status_code == 400
    assert (await client.post("/v2/systemsharedmemory/region/r/unregister")).status_code == 200
    assert (await client.get("/v2/systemsharedmemory/region/r/status")).status_code == 404
    cuda = await client.post(
        "/v2/cudasharedmemory/region/g/register", json={"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 8}
    )
    assert cuda.status_code == 503 and "not supported on this node" in cuda.json()["error"]
    assert (await client.get("/v2/cudasharedmemory/status")).json() == []


async def test_model_control_needs_the_token_and_the_setting(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v2/repository/models/m/load")).status_code == 401
    wrong = await client.post("/v2/repository/models/m/load", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    off = await client.post("/v2/repository/models/m/unload", headers={"authorization": f"Bearer {TOKEN}"})
    assert off.status_code == 503 and "repository_control" in off.json()["error"]
