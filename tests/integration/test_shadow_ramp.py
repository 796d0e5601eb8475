"""Shadows and ramp plans on the real gateway: a failing and a slow shadow leave the primary alone and are
logged under its request ids; a ramp whose canary fails rolls back by itself; a healthy one is promoted;
the table survives a restart of its actor (reloaded from its file)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.request_log import RequestLogReader
from tests.integration.conftest import ADMIN_TOKEN, RunningGateway, until

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.admin_url,
        timeout=30,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "x-operator": "tests"},
    ) as client:
        yield client
        # Leave `canary` as other tests expect it: no shadows, everything on version 1, no ramp.
        client.put("/admin/traffic/canary/shadows", json={"shadows": {}})
        assert client.put("/admin/traffic/canary", json={"weights": {"1": 100}}).status_code == 200


def predict(gateway: RunningGateway, n: int, tag: str) -> list[tuple[str, int, str]]:
    """n concurrent unpinned requests: (request id, HTTP status, version that answered)."""

    def one(i: int) -> tuple[str, int, str]:
        rid = f"{tag}-{i}"
        r = httpx.post(f"{gateway.http_url}/v2/models/canary/infer", json={**X, "id": rid}, timeout=30)
        return rid, r.status_code, r.json().get("model_version", "")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    for line in httpx.get(gateway.metrics, timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_failing_and_slow_shadows_never_touch_the_primary(gateway: RunningGateway, admin: httpx.Client) -> None:
    assert admin.put("/admin/traffic/canary", json={"weights": {"1": 100}}).status_code == 200
    r = admin.put("/admin/traffic/canary/shadows", json={"shadows": {"2": 1.0, "3": 1.0}, "reason": "try both"})
    assert r.status_code == 200, r.text
    tag = f"shadow-{uuid.uuid4().hex[:8]}"
    answers = predict(gateway, 60, tag)
    assert Counter((status, version) for _, status, version in answers) == {(200, "1"): 60}

    def shadow_records() -> list[dict[str, Any]] | None:
        records = [r for r in RequestLogReader(gateway.request_log) if str(r["request_id"]).startswith(tag)]
        return records if len([r for r in records if r["role"] == "shadow"]) == 120 else None

    records = until(shadow_records, "a shadow record per request and shadow version")
    primary = {r["request_id"]: r for r in records if r["role"] != "shadow"}
    assert sorted(primary) == sorted(rid for rid, _, _ in answers)
    assert all(r["code"] == "OK" and r["version"] == "1" for r in primary.values())
    by_version = Counter((r["version"], r["code"]) for r in records if r["role"] == "shadow")
    assert by_version == {("2", "INTERNAL"): 60, ("3", "OK"): 60}
    assert all(r["routing_reason"] == "shadow of version 1" for r in records if r["role"] == "shadow")
    assert metric(gateway, "gateway_shadow_comparisons_total", model="canary", version="3", result="agree") >= 60
    assert metric(gateway, "gateway_shadow_requests_total", model="canary", version="2", code="INTERNAL") >= 60
    assert metric(gateway, "gateway_inference_requests_total", model="canary", version="1", code="OK") >= 60


def table(admin: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = admin.get("/admin/traffic/canary").json()
    return body


def test_a_ramp_whose_canary_fails_rolls_back_by_itself(gateway: RunningGateway, admin: httpx.Client) -> None:
    assert admin.put("/admin/traffic/canary", json={"weights": {"1": 100}}).status_code == 200
    r = admin.post(
        "/admin/traffic/canary/ramp",
        json={"version": "2", "steps": [20, 50, 100], "every_s": 600, "max_error_rate": 0.05, "min_requests": 5},
    )
    assert r.status_code == 200, r.text
    assert table(admin)["weights"] == {"1": 80, "2": 20}
    tag = f"ramp-{uuid.uuid4().hex[:8]}"
    # Traffic until the table has judged the canary (it fails every call) and rolled the split back.
    rounds = 0
    while table(admin)["ramp"] is not None:
        predict(gateway, 20, f"{tag}-{rounds}")
        rounds += 1
        assert rounds < 200, "the ramp was never rolled back"
    t = table(admin)
    assert t["weights"] == {"1": 100}
    last = admin.get("/admin/traffic/canary/history").json()[-1]
    assert last["rollback"] is True and last["who"] == "ramp" and "error rate" in last["reason"]
    until(
        lambda: (
            metric(gateway, "gateway_traffic_weight", model="canary", version="2") == 0
            and metric(gateway, "gateway_traffic_weight", model="canary", version="1") == 100
        ),
        "the weight gauge to follow",
    )
    answers = until(
        lambda: (a := predict(gateway, 40, f"{tag}-after")) and all(s == 200 for _, s, _ in a) and a,
        "every request answered by version 1 after the rollback",
    )
    assert {v for _, _, v in answers} == {"1"}


def test_a_healthy_ramp_is_promoted(gateway: RunningGateway, admin: httpx.Client) -> None:
    assert admin.put("/admin/traffic/canary", json={"weights": {"1": 100}}).status_code == 200
    r = admin.post(
        "/admin/traffic/canary/ramp",
        json={"version": "3", "steps": [50, 100], "every_s": 1, "max_error_rate": 0.05, "min_requests": 5},
    )
    assert r.status_code == 200, r.text
    tag, rounds = f"promote-{uuid.uuid4().hex[:8]}", 0
    while table(admin)["ramp"] is not None:
        answers = predict(gateway, 16, f"{tag}-{rounds}")
        assert all(status == 200 for _, status, _ in answers)  # a step change fails no request
        rounds += 1
        assert rounds < 200, "the ramp was never promoted"
    assert table(admin)["weights"] == {"3": 100}
    steps = [e["after"] for e in admin.get("/admin/traffic/canary/history").json()[-3:]]
    assert steps == [{"1": 50, "3": 50}, {"1": 0, "3": 100}, {"3": 100}]


def test_the_table_survives_a_restart_of_its_actor(
    gateway: RunningGateway, admin: httpx.Client, tmp_path: Path
) -> None:
    assert (
        admin.put("/admin/traffic/canary", json={"weights": {"1": 60, "3": 40}, "reason": "before"}).status_code == 200
    )
    before = table(admin)
    kill = (
        f"import ray; ray.init(address={gateway.ray_address!r}, namespace='gateway', log_to_driver=False); "
        "ray.kill(ray.get_actor('traffic-table')); print('killed')"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if (Path.home() / ".ray" / "auth_token").is_file() or env.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_MODE"] = "token"
    out = subprocess.run(
        [sys.executable, "-c", kill], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert "killed" in out.stdout, out.stderr[-2000:]
    # The gateway reconnects: the actor is recreated from its file with the same revision and split.
    after = until(
        lambda: (t := admin.get("/admin/traffic/canary")).status_code == 200 and t.json(),
        "the admin API to answer from a recreated table",
    )
    assert (after["weights"], after["revision"]) == (before["weights"], before["revision"])
    assert admin.put("/admin/traffic/canary", json={"weights": {"1": 100}}).status_code == 200
    until(
        lambda: {v for _, _, v in predict(gateway, 10, f"restart-{uuid.uuid4().hex[:6]}")} == {"1"},
        "the gateway to follow the recreated table",
    )
