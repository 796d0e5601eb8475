"""Traffic splitting: which version answers an unpinned request (weighted canary, sticky A/B).

A `TrafficTable` holds, per model, integer percentages per version; `Router` answers from an
immutable snapshot that `apply()` swaps atomically, so no request sees a half-applied table.
Sticky requests use weighted rendezvous hashing: the same key keeps its version while the
weights stand, and when they change only the keys that must move, move.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.catalog import Catalog
from gateway.errors import invalid, not_found


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


class TrafficTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = 0
    models: dict[str, ModelSplit] = Field(default_factory=dict)


def check_table(table: TrafficTable, catalog: Catalog) -> None:
    """Refuses a table naming unknown versions, or sending traffic to a version that is not ready."""
    for model, split in table.models.items():
        versions = catalog.model_versions(model)  # NOT_FOUND for an unknown model
        for version, weight in split.weights.items():
            if version not in versions:
                raise not_found(f"model '{model}' has no version '{version}' (it has {', '.join(versions)})")
            if weight > 0 and not versions[version].ready:
                raise invalid(f"model '{model}' version '{version}' is not ready ({versions[version].reason}); "
                              "it cannot take traffic")


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
        self.table = TrafficTable()

    def check(self, table: TrafficTable) -> None:
        check_table(table, self.catalog)

    def apply(self, table: TrafficTable) -> None:
        check_table(table, self.catalog)
        compiled = {}
        for model, split in table.models.items():
            versions = tuple(split.weights)
            weights = tuple(split.weights[v] for v in versions)
            cumulative = tuple(sum(weights[: i + 1]) for i in range(len(weights)))
            primary = max(versions, key=lambda v: split.weights[v])  # ties: the first listed
            compiled[model] = _Compiled(versions, weights, cumulative, primary)
        # One assignment: a request reads either the old snapshot or the new one, never a mix.
        self._compiled, self.table = compiled, table

    def choose(self, model: str, pinned: str | None, routing_key: str | None) -> Route:
        if pinned is not None:
            return Route(pinned, "pinned", "version named by the request")
        split = self._compiled.get(model)
        if split is None:
            return Route(self.catalog.default_version(model).version, "primary", "newest ready version")
        if routing_key is not None:
            # Weighted rendezvous hashing: score w / -ln(h); weight 0 never wins, 100 always does.
            best = max(range(len(split.versions)), key=lambda i: split.weights[i] / -math.log(
                _unit_hash(routing_key, split.versions[i])))
            version, reason = split.versions[best], "sticky routing key"
        else:
            r = self._rng.random() * 100.0
            i = next(i for i, c in enumerate(split.cumulative) if r < c)
            version, reason = split.versions[i], "weighted split"
        return Route(version, "primary" if version == split.primary else "canary", reason)
