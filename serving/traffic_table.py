"""The cluster's one traffic table: a named, detached Ray actor that every gateway process follows.

It keeps per-model weights with a revision number and an audit history, persists them to a JSON
file (written to a temporary name, then renamed) so a restart of Ray keeps them, and lets gateways
long-poll for a newer revision. Validation against the model repository happens in the gateway
that accepts the change; the table only stores what was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import ray

ACTOR_NAME = "traffic-table"
NAMESPACE = "gateway"
MAX_HISTORY = 1000  # audit entries kept per model


@ray.remote(num_cpus=0)
class TrafficTableActor:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.revision = 0
        self.models: dict[str, dict[str, int]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            self.revision = int(saved["revision"])
            self.models = saved["models"]
            self.history = saved.get("history", {})
        self._changed = asyncio.Event()

    def get(self) -> dict[str, Any]:
        return {"revision": self.revision, "models": self.models}

    def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        before = self.models.get(model)
        self.models = {**self.models, model: dict(weights)}
        self.revision += 1
        entry = {"revision": self.revision, "time": time.time(), "who": who, "reason": reason,
                 "before": before, "after": dict(weights)}
        self.history[model] = [*self.history.get(model, []), entry][-MAX_HISTORY:]
        self._save()
        # Wake every waiting gateway, then arm the event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        return self.get()

    def model_history(self, model: str) -> list[dict[str, Any]]:
        return list(self.history.get(model, []))

    async def wait_newer(self, revision: int, timeout_s: float) -> dict[str, Any]:
        """Returns the table as soon as its revision passes `revision`, or after timeout_s anyway."""
        if self.revision <= revision:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.get()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"revision": self.revision, "models": self.models, "history": self.history}))
        os.replace(tmp, self.path)


def connect(path: str) -> Any:
    """The cluster's table actor, created on first use (detached: it outlives the gateway that made it)."""
    actor_class: Any = TrafficTableActor  # ray.remote hides .options from the type checker
    return actor_class.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True).remote(path)
