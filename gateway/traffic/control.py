"""The traffic control loop of one gateway process, between the cluster's table and the data plane.

Operators' changes (through the admin API) are checked against this gateway's versions, stored in the
cluster's table, then applied here; every gateway follows the table's revisions (long poll), looks in the
repository for versions a revision names that it does not serve yet, and reports what ramped versions
did, once a second, for the table to judge the ramp. Every route and shadow change reaches the data
plane through one call, `apply_traffic`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from contract.experiments.plan import ExperimentPlan
from contract.manifest import Manifest
from contract.ramp import PlanError, RampPlan, split_with
from contract.repository import Repository, VersionEntry
from gateway.errors import Code, GatewayError, field_errors
from gateway.plane.catalog import VersionInfo
from gateway.traffic.routing import ModelSplit, RoutingTable, only, versions_named

log = logging.getLogger("gateway")

Key = tuple[str, str]
# Finds versions added to the repository since start-up and starts serving them (RepositoryDiscovery).
Discover = Callable[[set[Key]], Awaitable[None]]


class TrafficStore(Protocol):
    """The cluster's one traffic table as a gateway sees it (gateway.dispatch.RayTrafficStore). A change the
    table refuses raises GatewayError INVALID_ARGUMENT; every change returns the whole stored table."""

    async def get(self) -> dict[str, Any]: ...

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]: ...

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]: ...

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]: ...

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]: ...

    async def history(self, model: str) -> list[dict[str, Any]]: ...

    async def report(self, gateway_id: str, counts: dict[str, Any]) -> None: ...

    async def wait_newer(self, revision: int, timeout_s: float) -> dict[str, Any]: ...

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]: ...

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]: ...

    async def experiment(self, model: str) -> dict[str, Any] | None: ...

    async def report_outcomes(self, gateway_id: str, snapshots: dict[str, Any]) -> None: ...

    async def claim_join(self, gateway_id: str, root_id: str, lease_s: float) -> bool: ...

    async def release_join(self, gateway_id: str, root_id: str) -> None: ...


class Plane(Protocol):
    """What the control loop needs of the data plane (gateway.core.DataPlane)."""

    @property
    def routing_table(self) -> RoutingTable: ...

    def check_traffic(self, table: RoutingTable) -> None: ...

    def apply_traffic(self, table: RoutingTable) -> list[str]: ...

    def require_model(self, model: str) -> dict[str, VersionInfo]: ...

    def version(self, model: str, version: str) -> VersionInfo: ...

    def default_version(self, model: str) -> VersionInfo: ...

    def versions(self) -> list[VersionInfo]: ...

    def add_version(self, info: VersionInfo) -> None: ...

    def take_live_counts(self) -> dict[str, dict[str, list[Any]]]: ...

    def merge_live_counts(self, counts: dict[str, dict[str, list[Any]]]) -> None: ...


class Readiness(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...


class Deployer(Protocol):
    """Deploys versions on the cluster and reports their readiness (gateway.dispatch.RayDispatcher)."""

    def deploy(self, entries: list[VersionEntry]) -> None: ...

    def readiness(self) -> Mapping[Key, Readiness]: ...


def table_from(stored: dict[str, Any]) -> RoutingTable:
    """The cluster's stored table as the validated table a gateway routes by (ValidationError when malformed)."""
    return RoutingTable(
        revision=int(stored["revision"]),
        models={m: ModelSplit(weights=w) for m, w in stored["models"].items()},
        shadows=stored.get("shadows", {}),
        ramps=stored.get("ramps", {}),
    )


class RepositoryDiscovery:
    """Starts serving the versions a revision names that this gateway does not know yet but the repository has.

    Versions are immutable and only ever added, so this attaches to (or deploys) the new ones and leaves
    everything that is already serving alone."""

    def __init__(
        self, plane: Plane, repository: Path, deployer: Deployer, version_info: Callable[[Manifest], VersionInfo]
    ) -> None:
        self._plane = plane
        self._repository = repository
        self._deployer = deployer
        self._version_info = version_info
        self._lock = asyncio.Lock()

    async def __call__(self, named: set[Key]) -> None:
        known = {(v.model, v.version) for v in self._plane.versions()}
        served = {m for m, _ in known}  # other gateways on the cluster may serve other models
        if not {(m, v) for m, v in named if m in served} - known:
            return
        async with self._lock:
            known = {(v.model, v.version) for v in self._plane.versions()}
            entries = await asyncio.to_thread(Repository(self._repository).scan)
            new = [
                e
                for e in entries
                if (e.manifest.name, e.manifest.version) in named - known and e.manifest.name in served
            ]
            if not new:
                return
            await asyncio.to_thread(self._deployer.deploy, new)
            states = await asyncio.to_thread(self._deployer.readiness)
            for e in new:
                info = self._version_info(e.manifest)
                state = states.get((info.model, info.version))
                if state is not None:
                    info.state, info.reason = state.state, state.reason
                self._plane.add_version(info)
                log.warning(
                    "now serving model %s version %s (%s), named by the traffic table",
                    info.model,
                    info.version,
                    info.state,
                )


class TrafficControl:
    def __init__(
        self, plane: Plane, store: TrafficStore, discover: Discover | None = None, gateway_id: str | None = None
    ) -> None:
        self.plane = plane
        self.store = store
        self._discover = discover
        self.gateway_id = gateway_id or f"{socket.gethostname()}:{os.getpid()}"
        self._pending: dict[str, Any] | None = None  # a revision waiting for versions to be ready
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # --- what operators read and change (the admin API) -------------------------------------
    async def table(self) -> dict[str, Any]:
        return await self.store.get()

    async def model_view(self, model: str) -> dict[str, Any]:
        """NOT_FOUND for a model neither in the cluster's table nor served here (the table may name models that
        only other gateways serve: those are shown)."""
        table = await self.store.get()
        sections = ("models", "shadows", "ramps", "experiments")
        if not any(model in table.get(section, {}) for section in sections):
            self.plane.require_model(model)
        return {
            "model": model,
            "weights": table["models"].get(model),
            "shadows": table.get("shadows", {}).get(model, {}),
            "ramp": table.get("ramps", {}).get(model),
            "revision": table["revision"],
        }

    async def history(self, model: str) -> list[dict[str, Any]]:
        return await self.store.history(model)

    async def set_split(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        try:
            split = ModelSplit(weights=weights)
        except ValidationError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, field_errors(exc)) from None
        current = await self._current()
        await self._check(current.model_copy(update={"models": {**current.models, model: split}}), model)
        return await self._applied(await self.store.set_model(model, split.weights, who, reason))

    async def promote(self, model: str, version: str, who: str, reason: str) -> dict[str, Any]:
        return await self.set_split(model, {version: 100}, who, reason or f"promote version {version}")

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]:
        current = await self._current()
        await self._check(current.model_copy(update={"shadows": {**current.shadows, model: shadows}}), model)
        for version in shadows:  # a new shadow must be able to answer now
            info = self.plane.version(model, version)
            if not info.ready:
                raise GatewayError(
                    Code.INVALID_ARGUMENT,
                    f"model '{model}' version '{version}' is not ready ({info.reason}); it cannot shadow traffic",
                )
        return await self._applied(await self.store.set_shadows(model, shadows, who, reason))

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        plan = dict(plan)
        try:
            parsed = RampPlan.parse(plan)
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
        current = await self._current()
        if model in current.models:
            base = current.models[model].weights
        else:  # no split yet: ramp away from what unpinned requests get now, or the newest other ready version
            ready = [
                v.version for v in self.plane.require_model(model).values() if v.ready and v.version != parsed.version
            ]
            if not ready:
                raise GatewayError(
                    Code.INVALID_ARGUMENT,
                    f"model '{model}' has no other ready version to ramp version '{parsed.version}' up from",
                )
            default = self.plane.default_version(model).version
            base = {default if default != parsed.version else ready[-1]: 100}
            plan["base"] = base
        try:
            first = ModelSplit(weights=split_with(base, parsed.version, parsed.steps[0]))
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
        await self._check(current.model_copy(update={"models": {**current.models, model: first}}), model)
        return await self._applied(await self.store.start_ramp(model, plan, who, reason))

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]:
        self.plane.require_model(model)
        return await self._applied(await self.store.rollback(model, who, reason))

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        """Checks the plan and its arms against this gateway's versions, then stores it (the table runs it)."""
        try:
            parsed = ExperimentPlan.parse(plan)
            split = ModelSplit(weights=parsed.arms)
        except PlanError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
        except ValidationError as exc:
            raise GatewayError(Code.INVALID_ARGUMENT, field_errors(exc)) from None
        current = await self._current()
        await self._check(current.model_copy(update={"models": {**current.models, model: split}}), model)
        return await self._applied(await self.store.start_experiment(model, plan, who, reason))

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]:
        self.plane.require_model(model)
        return await self._applied(await self.store.stop_experiment(model, who, reason))

    async def experiment(self, model: str) -> dict[str, Any]:
        """The model's latest experiment (running or ended) with its timeline; NOT_FOUND when it never had one."""
        found = await self.store.experiment(model)
        if found is None:
            raise GatewayError(Code.NOT_FOUND, f"model '{model}' has had no experiment; start one first")
        return found

    async def _current(self) -> RoutingTable:
        return table_from(await self.store.get())

    async def _check(self, candidate: RoutingTable, model: str) -> None:
        """NOT_FOUND / INVALID_ARGUMENT for the model's new entry (other models may be served by other gateways);
        a version this gateway has not seen yet is looked for in the repository."""
        entry = only(candidate, {model})
        try:
            self.plane.check_traffic(entry)
        except GatewayError as exc:
            if exc.code != Code.NOT_FOUND or self._discover is None:
                raise
            try:
                await self._discover(versions_named(entry))
            except Exception as exc:  # noqa: BLE001 - the repository or Ray failed: say so, change nothing
                raise GatewayError(Code.UNAVAILABLE, f"cannot look for new versions in the repository: {exc}") from None
            self.plane.check_traffic(entry)

    async def _applied(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Applies a revision this gateway just stored at once, rather than when the long poll brings it."""
        self._apply_now(stored)
        return stored

    # --- following the cluster's table ------------------------------------------------------
    async def seed(self, splits: Mapping[str, dict[str, int]]) -> dict[str, Any]:
        """Stores the start-up splits of models the cluster's table has none for (the table wins); returns
        the stored table. GatewayError or ValidationError for a split that cannot be applied here."""
        stored = await self.store.get()
        for model, weights in splits.items():
            if model in stored["models"]:
                continue
            self.plane.check_traffic(RoutingTable(models={model: ModelSplit(weights=weights)}))
            stored = await self.store.set_model(model, weights, "settings", "initial split from the traffic setting")
        return stored

    async def start(self, stored: dict[str, Any]) -> None:
        """Applies the stored table, then follows its revisions and reports live counts until stop()."""
        await self.apply_stored(stored)
        self._tasks.append(asyncio.create_task(self._follow(int(stored["revision"]))))
        self._tasks.append(asyncio.create_task(self._report_live_counts()))

    async def retry_pending(self) -> None:
        """Applies a revision held back for versions that were not ready (called as readiness changes)."""
        if self._pending is not None:
            await self.apply_stored(self._pending)  # looks for missing versions again, too

    async def apply_stored(self, stored: dict[str, Any]) -> None:
        try:
            named = versions_named(table_from(stored))
        except ValidationError as exc:
            log.warning("traffic table revision %s is malformed: %s", stored.get("revision"), exc)
            return
        if self._discover is not None:
            try:
                await self._discover(named)  # e.g. a version a retraining job registered and deployed
            except Exception as exc:  # noqa: BLE001 - a repository or Ray hiccup: apply what can be, retry later
                log.warning(
                    "looking for new versions named by traffic table revision %s failed: %s",
                    stored.get("revision"),
                    exc,
                )
        self._apply_now(stored)

    def _apply_now(self, stored: dict[str, Any]) -> None:
        try:
            table = table_from(stored)
            if table.revision < self.plane.routing_table.revision:  # a newer one was applied meanwhile
                self._pending = None
                return
            problems = self.plane.apply_traffic(table)
        except (GatewayError, ValidationError) as exc:
            log.warning("traffic table revision %s not applied here: %s", stored.get("revision"), exc)
            return
        # A model whose entry this gateway cannot apply yet (a version it has just attached to may still be
        # starting) keeps its current routes; retry_pending() tries again.
        if problems and self._pending != stored:  # once per revision, not on every retry
            log.warning(
                "traffic table revision %s: kept current routes for %s", stored.get("revision"), "; ".join(problems)
            )
        self._pending = stored if problems else None

    async def _follow(self, revision: int) -> None:
        while not self._stopping.is_set():
            try:
                stored = await self.store.wait_newer(revision, 5.0)
            except Exception as exc:  # noqa: BLE001 - the table's actor restarting must not stop following
                log.warning("traffic table unreachable: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            if int(stored["revision"]) > revision:
                revision = int(stored["revision"])
                await self.apply_stored(stored)

    async def _report_live_counts(self) -> None:
        """Sends the cluster's table what ramped versions did here, once a second, for their guards."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
            counts = self.plane.take_live_counts()
            if counts:
                try:
                    await self.store.report(self.gateway_id, counts)
                except Exception as exc:  # noqa: BLE001 - the table restarting must not stop reporting
                    self.plane.merge_live_counts(counts)  # sent with the next report
                    log.warning("cannot report live counts to the traffic table: %s", exc)

    async def stop(self, drain_s: float) -> None:
        self._stopping.set()
        for task in self._tasks[:1]:
            task.cancel()  # the follower may sit in a long poll of the table
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, drain_s)
