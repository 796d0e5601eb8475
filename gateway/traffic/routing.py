"""Traffic splitting: which version answers an unpinned request (weighted canary, sticky A/B, shadows).

A `RoutingTable` holds, per model, integer percentages per version, the shadow versions that get a
copy of each request, and the running ramp plan (stepped by the cluster's table, contract/ramp.py);
`Router` answers from an immutable snapshot that `apply()` swaps atomically, so no request sees a
half-applied table. Sticky requests use weighted rendezvous hashing: the same key keeps its version
while the weights stand, and when they change only the keys that must move, move.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.ramp import FAILURE_CODES, N_BUCKETS, PINNED_SUFFIX, latency_bucket
from gateway.errors import GatewayError, invalid, not_found
from gateway.plane.catalog import Catalog

__all__ = ["FAILURE_CODES", "LiveCounts", "ModelSplit", "Route", "Router", "RoutingTable", "check_table"]


class ModelSplit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, int] = Field(min_length=1)
    """Percent of unpinned traffic per version: whole numbers summing to 100."""

    @field_validator("weights")
    @classmethod
    def _sum_to_100(cls, w: dict[str, int]) -> dict[str, int]:
        if any(v < 0 or v > 100 for v in w.values()):
            raise ValueError("every weight must be between 0 and 100")
        if sum(w.values()) != 100:
            raise ValueError(f"weights must sum to 100, they sum to {sum(w.values())}")
        return w


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = 0
    models: dict[str, ModelSplit] = Field(default_factory=dict)
    shadows: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per model: shadow version -> fraction of requests mirrored to it."""
    ramps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per model: the running ramp plan as the cluster's table reports it (`version`, `percent`, ...)."""


def _check_version(catalog: Catalog, model: str, version: str, use: str | None) -> None:
    """NOT_FOUND for an unknown model or version; with `use`, INVALID_ARGUMENT when it is not ready for it."""
    versions = catalog.model_versions(model)
    if version not in versions:
        raise not_found(f"model '{model}' has no version '{version}' (it has {', '.join(versions)})")
    if use is not None and not versions[version].ready:
        raise invalid(f"model '{model}' version '{version}' is not ready ({versions[version].reason}); it cannot {use}")


def check_table(table: RoutingTable, catalog: Catalog) -> None:
    """Refuses a table naming unknown versions, or sending traffic to a version that is not ready."""
    for model, split in table.models.items():
        for version, weight in split.weights.items():
            _check_version(catalog, model, version, "take traffic" if weight > 0 else None)
    for model, shadows in table.shadows.items():
        for version, sample in shadows.items():
            # Only existence: a shadow that goes unready must not hold the model's split down (its copies are
            # counted as dropped meanwhile). The admin API checks readiness when an operator adds one.
            _check_version(catalog, model, version, None)
            if not 0 < sample <= 1:
                raise invalid(f"a shadow's sample rate is a fraction in (0, 1], got {sample} for version '{version}'")


def only(table: RoutingTable, models: set[str]) -> RoutingTable:
    """The table's entries for `models` alone."""
    return table.model_copy(
        update={
            "models": {m: s for m, s in table.models.items() if m in models},
            "shadows": {m: s for m, s in table.shadows.items() if m in models},
            "ramps": {m: r for m, r in table.ramps.items() if m in models},
        }
    )


def applicable(table: RoutingTable, catalog: Catalog, current: RoutingTable) -> tuple[RoutingTable, list[str]]:
    """The part of the cluster's table this gateway can apply, and what it could not.

    Gateways may serve different repositories on one cluster: a model this gateway does not serve is left
    out (others serve it). A model whose entry names a version that is unknown or not ready here keeps the
    entry it has now (the caller retries as readiness changes)."""
    served = set(catalog.model_names())
    parts: list[RoutingTable] = []
    problems: list[str] = []
    for model in sorted((set(table.models) | set(table.shadows)) & served):
        part = only(table, {model})
        try:
            check_table(part, catalog)
        except GatewayError as exc:
            problems.append(f"{model}: {exc.message}")
            part = only(current, {model})
        parts.append(part)
    merged = RoutingTable(
        revision=table.revision,
        models={m: s for p in parts for m, s in p.models.items()},
        shadows={m: s for p in parts for m, s in p.shadows.items()},
        ramps={m: r for p in parts for m, r in p.ramps.items()},
    )
    return merged, problems


def versions_named(table: RoutingTable) -> set[tuple[str, str]]:
    """Every (model, version) the table gives traffic to or shadows."""
    named = {(m, v) for m, split in table.models.items() for v in split.weights}
    named |= {(m, v) for m, shadows in table.shadows.items() for v in shadows}
    return named


@dataclass(frozen=True, slots=True)
class Route:
    version: str
    role: str  # primary | canary | pinned
    reason: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    versions: tuple[str, ...]
    weights: tuple[int, ...]
    cumulative: tuple[int, ...]
    primary: str


def _unit_hash(key: str, version: str) -> float:
    digest = hashlib.blake2b(f"{key}\x00{version}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # strictly inside (0, 1)


class Router:
    def __init__(self, catalog: Catalog, rng: random.Random | None = None) -> None:
        self.catalog = catalog
        self._rng = rng or random.Random()
        self._compiled: dict[str, _Compiled] = {}
        self.shadows: dict[str, tuple[tuple[str, float], ...]] = {}
        self.ramped: dict[str, str] = {}  # model -> the version its running ramp is stepping up
        self.table = RoutingTable()

    def check(self, table: RoutingTable) -> None:
        check_table(table, self.catalog)

    def apply(self, table: RoutingTable) -> bool:
        """Swaps in the table; an older revision than the one applied is ignored (returns False)."""
        if table.revision < self.table.revision:
            return False
        check_table(table, self.catalog)
        compiled = {}
        for model, split in table.models.items():
            versions = tuple(split.weights)
            weights = tuple(split.weights[v] for v in versions)
            cumulative = tuple(sum(weights[: i + 1]) for i in range(len(weights)))
            canary = table.ramps.get(model, {}).get("version")
            # The ramped version is the canary whatever its share; ties: the first listed.
            primary = max((v for v in versions if v != canary), key=lambda v: split.weights[v], default=versions[0])
            compiled[model] = _Compiled(versions, weights, cumulative, primary)
        shadows = {m: tuple(s.items()) for m, s in table.shadows.items() if s}
        ramped = {m: str(r["version"]) for m, r in table.ramps.items() if "version" in r}
        # One assignment: a request reads either the old snapshot or the new one, never a mix.
        self._compiled, self.shadows, self.ramped, self.table = compiled, shadows, ramped, table
        return True

    def choose(self, model: str, pinned: str | None, routing_key: str | None) -> Route:
        if pinned is not None:
            return Route(pinned, "pinned", "version named by the request")
        split = self._compiled.get(model)
        if split is None:
            return Route(self.catalog.default_version(model).version, "primary", "newest ready version")
        if routing_key is not None:
            # Weighted rendezvous hashing: score w / -ln(h); weight 0 never wins, 100 always does.
            best = max(
                range(len(split.versions)),
                key=lambda i: split.weights[i] / -math.log(_unit_hash(routing_key, split.versions[i])),
            )
            version, reason = split.versions[best], "sticky routing key"
        else:
            r = self._rng.random() * 100.0
            i = next(i for i, c in enumerate(split.cumulative) if r < c)
            version, reason = split.versions[i], "weighted split"
        return Route(version, "primary" if version == split.primary else "canary", reason)


class LiveCounts:
    """What ramped versions did since the last report, for the cluster's table to judge (contract/ramp.py).

    Only requests the split sent to the version (role canary) are its evidence: requests, failures and latency
    buckets (OK only). Requests that named the version (role pinned: smoke tests, `/versions/{v}`) are not the
    traffic the ramp is about, so they are counted apart (requests, failures) and never judged."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], list[Any]] = {}
        self._pinned: dict[tuple[str, str], list[int]] = {}

    def add(self, model: str, version: str, code: str, total_ms: float, role: str) -> None:
        if role == "pinned":
            p = self._pinned.setdefault((model, version), [0, 0])
            p[0] += 1
            if code in FAILURE_CODES:
                p[1] += 1
            return
        if role != "canary":
            return
        c = self._counts.get((model, version))
        if c is None:
            c = self._counts[(model, version)] = [0, 0, [0] * N_BUCKETS]
        c[0] += 1
        if code in FAILURE_CODES:
            c[1] += 1
        elif code == "OK":
            c[2][latency_bucket(total_ms)] += 1

    def merge(self, counts: dict[str, dict[str, list[Any]]]) -> None:
        """Puts back counts whose report failed, so the next report carries them."""
        for model, versions in counts.items():
            for key, values in versions.items():
                if key.endswith(PINNED_SUFFIX):
                    p = self._pinned.setdefault((model, key.removesuffix(PINNED_SUFFIX)), [0, 0])
                    p[0] += values[0]
                    p[1] += values[1]
                    continue
                requests, failures, buckets = values
                c = self._counts.setdefault((model, key), [0, 0, [0] * N_BUCKETS])
                c[0] += requests
                c[1] += failures
                c[2] = [a + b for a, b in zip(c[2], buckets, strict=True)]

    def take(self) -> dict[str, dict[str, list[Any]]]:
        """{model: {version: [requests, failures, latency buckets], version + PINNED_SUFFIX: [requests, failures]}}."""
        counts, self._counts = self._counts, {}
        pinned, self._pinned = self._pinned, {}
        out: dict[str, dict[str, list[Any]]] = {}
        for (model, version), c in counts.items():
            out.setdefault(model, {})[version] = c
        for (model, version), p in pinned.items():
            out.setdefault(model, {})[version + PINNED_SUFFIX] = p
        return out
