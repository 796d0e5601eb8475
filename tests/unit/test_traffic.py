"""Traffic splitting: exact weights, binomial bounds, sticky keys that move minimally, validation."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from contract.manifest import Manifest, TensorSpecModel
from gateway.errors import Code, GatewayError
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.settings import BatchingOverride
from gateway.traffic.routing import ModelSplit, Router, RoutingTable


def catalog(*versions: tuple[str, str]) -> Catalog:
    spec = [TensorSpecModel(name="x", datatype="FP32", shape=[-1, 1])]
    infos = []
    for version, state in versions:
        info = VersionInfo.from_manifest(
            Manifest(name="m", version=version, runtime="array", inputs=spec, outputs=spec), BatchingOverride()
        )
        info.state = state
        infos.append(info)
    return Catalog(infos)


def router(weights: dict[str, int], seed: int = 1) -> Router:
    r = Router(catalog(("1", "READY"), ("2", "READY"), ("3", "READY")), random.Random(seed))
    r.apply(RoutingTable(models={"m": ModelSplit(weights=weights)}))
    return r


def test_90_10_lands_inside_the_binomial_999_interval() -> None:
    r = router({"1": 90, "2": 10})
    n = 20_000
    canary = sum(r.choose("m", None, None).version == "2" for _ in range(n))
    half_width = 3.29 * math.sqrt(n * 0.1 * 0.9)  # 99.9% two-sided normal approximation
    assert abs(canary - n * 0.1) <= half_width, canary


@pytest.mark.parametrize("weights", [{"1": 100, "2": 0}, {"1": 0, "2": 100}, {"1": 0, "2": 100, "3": 0}])
def test_0_and_100_are_exact_with_and_without_keys(weights: dict[str, int]) -> None:
    r = router(weights)
    only = next(v for v, w in weights.items() if w == 100)
    assert {r.choose("m", None, None).version for _ in range(5000)} == {only}
    assert {r.choose("m", None, f"user-{i}").version for i in range(5000)} == {only}


def test_sticky_keys_stay_and_move_minimally() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    before = router({"1": 90, "2": 10})
    first = {k: before.choose("m", None, k).version for k in keys}
    assert all(before.choose("m", None, k).version == first[k] for k in keys[:2000])  # same key, same version
    after = router({"1": 80, "2": 20}, seed=99)
    second = {k: after.choose("m", None, k).version for k in keys}
    moved = [k for k in keys if first[k] != second[k]]
    # Only keys that had to move moved: v2 kept all its keys, and about 10% of all keys left v1 for v2.
    assert all(first[k] == "1" and second[k] == "2" for k in moved)
    assert abs(len(moved) - 0.1 * len(keys)) <= 3.29 * math.sqrt(len(keys) * 0.1 * 0.9)
    share = sum(v == "2" for v in second.values()) / len(keys)
    assert abs(share - 0.2) < 0.015


def test_roles_and_pins() -> None:
    r = router({"1": 90, "2": 10})
    assert {(x.version, x.role) for x in (r.choose("m", None, f"k{i}") for i in range(500))} == {
        ("1", "primary"),
        ("2", "canary"),
    }
    assert r.choose("m", "3", "k").version == "3" and r.choose("m", "3", None).role == "pinned"


def test_no_split_means_newest_ready_version() -> None:
    r = Router(catalog(("1", "READY"), ("2", "READY"), ("3", "LOADING")))
    route = r.choose("m", None, None)
    assert (route.version, route.role) == ("2", "primary")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"1": 90, "2": 20}, "sum to 100"),
        ({"1": 110, "2": -10}, "between 0 and 100"),
        ({}, "at least 1"),
    ],
)
def test_invalid_weights_are_refused(weights: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSplit(weights=weights)


def test_a_table_naming_unknown_or_unready_versions_is_refused_and_changes_nothing() -> None:
    r = Router(catalog(("1", "READY"), ("2", "LOADING")))
    r.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 100})}))
    with pytest.raises(GatewayError) as unknown:
        r.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 50, "9": 50})}))
    assert unknown.value.code is Code.NOT_FOUND
    with pytest.raises(GatewayError) as unready:
        r.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 50, "2": 50})}))
    assert unready.value.code is Code.INVALID_ARGUMENT and "not ready" in unready.value.message
    with pytest.raises(GatewayError) as unknown_model:
        r.apply(RoutingTable(models={"zz": ModelSplit(weights={"1": 100})}))
    assert unknown_model.value.code is Code.NOT_FOUND
    assert r.table.models["m"].weights == {"1": 100}  # the refused changes left the old table in place
    # An unready version may still be listed at weight 0 (staged before it takes traffic).
    r.apply(RoutingTable(models={"m": ModelSplit(weights={"1": 100, "2": 0})}))
