"""Model control (Triton's repository load/unload), reached through DataPlane.load_model / unload_model.

Load deploys a model's versions and waits until ready; unload refuses new requests, drains, then removes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from contract.manifest import Manifest
from contract.repository import Repository
from gateway.errors import Code, GatewayError, not_found, unavailable
from gateway.plane.catalog import VersionInfo

log = logging.getLogger(__name__)
Key = tuple[str, str]


class Plane(Protocol):
    def versions(self) -> list[VersionInfo]: ...

    def add_version(self, info: VersionInfo) -> None: ...

    def set_version_state(self, model: str, version: str, state: str, reason: str = "") -> None: ...

    def inflight(self, model: str, version: str) -> int: ...

    async def remove_version(self, model: str, version: str) -> None: ...


class Deployer(Protocol):
    def deploy(self, entries: list[Any]) -> None: ...

    def readiness(self) -> Mapping[Key, Any]: ...

    def undeploy(self, model: str, version: str) -> None: ...


class ModelControl:
    def __init__(
        self,
        plane: Plane,
        repository: Path,
        deployer: Deployer,
        version_info: Callable[[Manifest], VersionInfo],
        ready_timeout_s: float,
        drain_s: float,
        poll_s: float = 0.25,
    ) -> None:
        self._plane = plane
        self._repository = repository
        self._deployer = deployer
        self._version_info = version_info
        self._ready_timeout_s = ready_timeout_s
        self._drain_s = drain_s
        self._poll_s = poll_s
        self._lock = asyncio.Lock()  # one load or unload at a time

    async def load(self, model: str) -> None:
        async with self._lock:
            entries = [
                e for e in await asyncio.to_thread(Repository(self._repository).scan) if e.manifest.name == model
            ]
            if not entries:
                raise not_found(f"the model repository has no model '{model}' (no {model}/<version>/manifest.json)")
            known = {(v.model, v.version) for v in self._plane.versions()}
            new = [e for e in entries if (e.manifest.name, e.manifest.version) not in known]
            if new:
                await asyncio.to_thread(self._deployer.deploy, new)
                for e in new:
                    self._plane.add_version(self._version_info(e.manifest))
                log.warning("loading model %s: versions %s", model, ", ".join(e.manifest.version for e in new))
            await self._wait_ready({(e.manifest.name, e.manifest.version) for e in entries})

    async def _wait_ready(self, keys: set[Key]) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._ready_timeout_s
        while True:
            states = await asyncio.to_thread(self._deployer.readiness)
            pending = []
            for key in keys:
                state = states.get(key)
                if state is not None:
                    self._plane.set_version_state(*key, state.state, state.reason)
                if state is None or state.state == "LOADING":
                    pending.append(key)
            if not pending:
                break
            if loop.time() > until:
                raise unavailable(f"model versions {sorted(pending)} are still loading; ask again later", 5.0)
            await asyncio.sleep(self._poll_s)
        failed = [f"version {v}: {states[(m, v)].reason}" for m, v in sorted(keys) if states[(m, v)].state != "READY"]
        if len(failed) == len(keys):
            raise GatewayError(Code.UNAVAILABLE, "no version of the model could be loaded: " + "; ".join(failed))

    async def unload(self, model: str) -> None:
        async with self._lock:
            versions = [v for v in self._plane.versions() if v.model == model]
            if not versions:
                raise not_found(f"model '{model}' is not loaded on this gateway")
            for v in versions:  # new requests are refused from now on; accepted ones go on
                self._plane.set_version_state(model, v.version, "UNAVAILABLE", "unloading")
            loop = asyncio.get_running_loop()
            until = loop.time() + self._drain_s
            while any(self._plane.inflight(model, v.version) for v in versions) and loop.time() < until:
                await asyncio.sleep(0.01)
            for v in versions:
                await self._plane.remove_version(model, v.version)
                await asyncio.to_thread(self._deployer.undeploy, model, v.version)
            log.warning("unloaded model %s (versions %s)", model, ", ".join(v.version for v in versions))
