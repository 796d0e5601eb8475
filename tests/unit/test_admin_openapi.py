"""docs/admin-openapi.yaml against the admin API it describes: every route in the spec and no other,
the spec's examples answered as documented, and Schemathesis-generated calls (valid and malformed) answered
with a documented status, content type and body shape, never a 500.

The admin API runs on a real HTTP server on loopback (uvicorn, as the gateway serves it), in front of the
real traffic control, the real traffic table state (serving/traffic_table.py, without its Ray actor wrapper)
and the real tenant file and gate. Only the data plane's Ray dispatch is absent: no admin call reaches it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import bind_tcp
from gateway.core import DataPlane
from gateway.doors import admin as admin_module
from gateway.doors.admin import AdminApi
from gateway.tenants.gate import TenantGate
from gateway.traffic.control import TrafficControl
from serving.traffic_table import TrafficTable
from tests.unit.test_admin_traffic import _NoDispatch
from tests.unit.test_experiments import ExperimentStore
from tests.unit.test_traffic import catalog

SPEC = Path(__file__).resolve().parents[2] / "docs" / "admin-openapi.yaml"
TOKEN = "admin-openapi-token"


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("admin-openapi")
    sock = bind_tcp("127.0.0.1", 0)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        # Built on the server's own event loop: the table and the gate start tasks and locks on it.
        plane = DataPlane(catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING")), _NoDispatch())
        state = TrafficTable(str(root / "traffic_table.json"))
        api = AdminApi(TrafficControl(plane, ExperimentStore(state)), TOKEN, TenantGate(root / "tenants.json"))
        config = uvicorn.Config(api, loop="none", lifespan="off", access_log=False, log_level="warning")
        server = holder["server"] = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        await task
        if state._ticker is not None:
            state._ticker.cancel()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the admin API did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        holder["server"].should_exit = True
        thread.join(10)


def spec_for_tests() -> dict[str, Any]:
    """The spec with path parameters narrowed to the test's model (and an unknown one) and a few tenant names,
    so generated calls reach real entries instead of only ever getting 404."""
    doc: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    params = doc["components"]["parameters"]
    params["Model"]["schema"] = {"type": "string", "enum": ["m", "no_such_model"]}
    params["Tenant"]["schema"] = {"type": "string", "enum": ["acme", "beta", "-bad-", "x" * 65]}
    return doc


def test_the_spec_has_every_admin_route_and_no_other() -> None:
    """The routes the admin module documents (its docstring, which its dispatch follows) are the spec's."""
    documented = {
        (method, re.sub(r"\{model\}", "{model_name}", re.sub(r"\{name\}", "{tenant}", path)))
        for method, path in re.findall(r"^\s+(GET|PUT|POST|DELETE)\s+(/admin/\S+)", admin_module.__doc__ or "", re.M)
    }
    doc = yaml.safe_load(SPEC.read_text())
    in_spec = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete")
    }
    assert len(documented) == 16
    assert in_spec == documented


def test_every_call_needs_the_token(admin_url: str) -> None:
    doc = yaml.safe_load(SPEC.read_text())
    with httpx.Client(base_url=admin_url, timeout=10) as client:
        for path, item in doc["paths"].items():
            for method in item:
                if method in ("get", "put", "post", "delete"):
                    r = client.request(method.upper(), path.format(model_name="m", tenant="acme"), json={})
                    assert r.status_code == 401 and "token" in r.json()["error"], (method, path, r.text)


def test_a_documented_session_of_changes(admin_url: str) -> None:
    """A split, shadows, a ramp, a rollback, an experiment and a tenant's life, each answer in the spec's shape."""
    doc = yaml.safe_load(SPEC.read_text())
    schemas = doc["components"]["schemas"]
    headers = {"authorization": f"Bearer {TOKEN}", "x-operator": "alice"}
    with httpx.Client(base_url=admin_url, headers=headers, timeout=10) as client:
        assert client.get("/admin/traffic/no_such_model").status_code == 404
        table = client.put("/admin/traffic/m", json={"weights": {"1": 90, "2": 10}, "reason": "canary"}).json()
        assert table["models"]["m"] == {"1": 90, "2": 10} and set(table) == set(schemas["TrafficTable"]["required"])
        assert client.put("/admin/traffic/m/shadows", json={"shadows": {"2": 0.5}}).status_code == 200
        ramp = {"version": "2", "steps": [50, 100], "every_s": 60}
        assert client.post("/admin/traffic/m/ramp", json=ramp).json()["ramps"]["m"]["percent"] == 50
        assert client.post("/admin/traffic/m/rollback").json()["ramps"] == {}
        history = client.get("/admin/traffic/m/history").json()
        assert [c["who"] for c in history] == ["alice"] * 4 and history[0]["reason"] == "canary"
        plan = {"arms": {"1": 50, "2": 50}, "metric": "accuracy", "max_samples": 1000}
        assert client.post("/admin/experiments/m", json=plan).json()["experiments"]["m"]["state"] == "running"
        stopped = client.post("/admin/experiments/m/stop", json={"reason": "enough"}).json()
        assert stopped["models"]["m"] == {"1": 100}
        shown = client.get("/admin/experiments/m").json()
        assert shown["state"] == "ended" and {a["state"] for a in shown["arms"].values()} == {"control", "ended"}
        added = client.post("/admin/tenants/acme", json={"requests_per_s": 10}).json()
        assert added["key"].startswith("gk_") and added["keys"] == 1
        assert client.post("/admin/tenants/acme", json={}).status_code == 409
        assert client.post("/admin/tenants/acme/rotate", json={"keep_old": True}).json()["keys"] == 2
        assert client.put("/admin/tenants/acme/limits", json={"rows_per_s": 5}).json()["rows_per_s"] == 5
        assert client.get("/admin/tenants").json()["tenants"]["acme"]["keys"] == 2
        assert client.delete("/admin/tenants/acme").json() == {"tenant": "acme"}
        assert client.delete("/admin/tenants/acme").status_code == 404


def no_server_fault(ctx: Any, response: Any, case: Any) -> None:
    assert response.status_code < 500, f"{case.method} {case.formatted_path} answered {response.status_code}"


schema = schemathesis.openapi.from_dict(spec_for_tests())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_admin_openapi_schema(case: Any, admin_url: str) -> None:
    case.call_and_validate(
        base_url=admin_url,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
        checks=[no_server_fault, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
