"""The cluster's one traffic table: a named, detached Ray actor that every gateway process follows.

Per model it keeps the weighted split, the shadow versions (with their sample rate) and a running
ramp plan, with a revision number and an audit history (who, when, before, after, why). It persists
everything to a JSON file (written to a temporary name, then renamed) so a restart of Ray keeps it,
and lets gateways long-poll for a newer revision.

Ramp plans run here, so they keep going while gateways come and go: gateways report their live
counts of ramped versions (`report`: requests the split sent there, and pinned ones apart), and a
ticker steps the canary's weight up, promotes it, or rolls back to the split before the ramp when a
guard is breached (contract/ramp.py).

Validation against the model repository happens in the gateway that accepts an operator's change;
the table checks only what it can know itself (weights sum to 100, a plan is well formed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray

from contract.experiments.experiment import ArmCounts, Experiment
from contract.experiments.plan import ExperimentPlan
from contract.ramp import PINNED_SUFFIX, PlanError, Ramp, RampPlan

ACTOR_NAME = "traffic-table"
NAMESPACE = "gateway"
MAX_HISTORY = 1000  # audit entries kept per model
TICK_S = 1.0
SAVE_COUNTS_S = 10.0  # how often experiment counts alone are written to the file

log = logging.getLogger(__name__)


def _check_weights(weights: dict[str, int]) -> dict[str, int]:
    clean = {str(v): int(w) for v, w in weights.items()}
    if not clean or any(w < 0 or w > 100 for w in clean.values()) or sum(clean.values()) != 100:
        raise PlanError(f"weights must be whole percents between 0 and 100 summing to 100, got {clean}")
    return clean


class TrafficTable:
    """The table itself; run as the `TrafficTableActor` Ray actor (tests drive it directly)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.revision = 0
        self.models: dict[str, dict[str, int]] = {}
        self.shadows: dict[str, dict[str, float]] = {}
        self.ramps: dict[str, Ramp] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.experiments: dict[str, Experiment] = {}  # the latest per model, running or ended
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            self.revision = int(saved["revision"])
            self.models = saved["models"]
            self.shadows = saved.get("shadows", {})
            self.ramps = {m: Ramp.from_dict(r) for m, r in saved.get("ramps", {}).items()}
            self.history = saved.get("history", {})
            self.experiments = {m: Experiment.from_dict(e) for m, e in saved.get("experiments", {}).items()}
        self._changed: asyncio.Event | None = None
        self._saved_at = 0.0
        self._joiners: dict[str, tuple[str, float]] = {}  # log root id -> (gateway id, lease end, monotonic)
        self._ticker: asyncio.Task[None] | None = None

    # --- reading ---------------------------------------------------------------------------
    def get(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "models": self.models,
            "shadows": self.shadows,
            "ramps": {m: r.public() for m, r in self.ramps.items()},
            "experiments": {m: e.public() for m, e in self.experiments.items()},
        }

    def model_history(self, model: str) -> list[dict[str, Any]]:
        return list(self.history.get(model, []))

    async def wait_newer(self, revision: int, timeout_s: float) -> dict[str, Any]:
        """Returns the table as soon as its revision passes `revision`, or after timeout_s anyway."""
        changed = self._event()
        if self.revision <= revision:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout_s)
        return self.get()

    # --- changing --------------------------------------------------------------------------
    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        """An operator's split. It ends a running ramp of the model (the operator took over)."""
        weights = _check_weights(weights)
        before = self.models.get(model)
        extra = {}
        if model in self.ramps:
            extra["ramp_ended"] = f"ramp of version {self.ramps.pop(model).plan.version} ended by this change"
        if who != "experiment" and self._running_experiment(model) is not None:
            self.experiments[model].end_by_operator(time.time(), f"ended by {who}'s split change")
            extra["experiment_ended"] = "the running experiment ended by this change"
        self.models = {**self.models, model: weights}
        return self._commit(model, who, reason, before, weights, **extra)

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]:
        clean = {str(v): float(s) for v, s in shadows.items()}
        if any(not 0 < s <= 1 for s in clean.values()):
            raise PlanError("a shadow's sample rate is a fraction in (0, 1]")
        before = {"shadows": self.shadows.get(model, {})}
        self.shadows = (
            {**self.shadows, model: clean} if clean else {m: s for m, s in self.shadows.items() if m != model}
        )
        return self._commit(model, who, reason, before, {"shadows": clean})

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        """Starts a canary ramp: the version gets the plan's first step at once.

        The split it ramps from is the model's current split, or the plan's `base` when the model has none.
        """
        parsed = RampPlan.parse(plan)
        if self._running_experiment(model) is not None:
            raise PlanError(f"model '{model}' is running an experiment; stop it before starting a ramp")
        base = self.models.get(model) or plan.get("base")
        if not base:
            raise PlanError(f"model '{model}' has no split to ramp from; set one first or give the plan a base")
        base = _check_weights(base)
        if model in self.ramps and self.ramps[model].plan.version != parsed.version:
            raise PlanError(
                f"model '{model}' is already ramping version {self.ramps[model].plan.version}; "
                "promote or roll it back first"
            )
        if model in self.ramps:  # the same version again: restart from its base, not from a ramped split
            base = self.ramps[model].base
        ramp = Ramp(parsed, base, 0, time.time())
        weights = ramp.weights()
        before = self.models.get(model)
        self.ramps = {**self.ramps, model: ramp}
        self.models = {**self.models, model: weights}
        self._ensure_ticker()
        return self._commit(
            model, who, reason or f"ramp of version {parsed.version} started", before, weights, ramp=ramp.public()
        )

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]:
        """Ends a running ramp at the split it started from; with no ramp, undoes the last split change."""
        before = self.models.get(model)
        if model in self.ramps:
            ramp = self.ramps.pop(model)
            after = ramp.base
            why = reason or f"ramp of version {ramp.plan.version} rolled back"
        else:
            previous = next(
                (
                    e["before"]
                    for e in reversed(self.history.get(model, []))
                    if e.get("after") == before and isinstance(e.get("before"), dict) and "shadows" not in e["before"]
                ),
                None,
            )
            if not previous:
                raise PlanError(f"model '{model}' has no earlier split to roll back to")
            after, why = previous, reason or "rolled back to the previous split"
        self.models = {**self.models, model: after}
        return self._commit(model, who, why, before, after)

    async def report(self, gateway_id: str, counts: dict[str, dict[str, list[Any]]]) -> None:
        """A gateway's live counts since its last report, per ramped model: {model: {version: [requests,
        failures, latency buckets], version + PINNED_SUFFIX: [requests, failures]}}: the first entry counts the
        requests the split sent to the version, the second those that named it. Other versions are ignored."""
        for model, versions in counts.items():
            ramp = self.ramps.get(model)
            if ramp is None:
                continue
            if ramp.plan.version in versions:
                requests, failures, buckets = versions[ramp.plan.version]
                ramp.window.add(int(requests), int(failures), [int(b) for b in buckets])
            if ramp.plan.version + PINNED_SUFFIX in versions:
                requests, failures = versions[ramp.plan.version + PINNED_SUFFIX]
                ramp.window.add_pinned(int(requests), int(failures))
        self._ensure_ticker()
        self._evaluate(time.time())

    # --- experiments (contract/experiments) --------------------------------------------------
    def experiment(self, model: str) -> dict[str, Any] | None:
        """The model's latest experiment with its timeline (for `gateway experiment report`), or None."""
        e = self.experiments.get(model)
        return None if e is None else {**e.public(), "timeline": e.timeline}

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        """Splits the model's traffic between the plan's arms; from now on outcomes decide (who = "experiment")."""
        parsed = ExperimentPlan.parse(plan)
        if model in self.ramps:
            raise PlanError(f"model '{model}' is ramping version {self.ramps[model].plan.version}; end the ramp first")
        if self._running_experiment(model) is not None:
            raise PlanError(f"model '{model}' already runs an experiment; stop it first")
        before = self.models.get(model)
        experiment = Experiment(model, parsed, time.time(), before)
        self.experiments = {**self.experiments, model: experiment}
        self.models = {**self.models, model: dict(parsed.arms)}
        self._ensure_ticker()
        why = reason or f"experiment on {parsed.metric}: arms {', '.join(parsed.arms)} against control {parsed.control}"
        return self._commit(model, who, why, before, dict(parsed.arms), experiment=experiment.public())

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]:
        """Ends the running experiment; control takes all of the model's traffic back."""
        experiment = self._running_experiment(model)
        if experiment is None:
            raise PlanError(f"model '{model}' runs no experiment")
        experiment.end_by_operator(time.time(), reason or f"stopped by {who}")
        before, after = self.models.get(model), {experiment.plan.control: 100}
        self.models = {**self.models, model: after}
        why = reason or f"experiment stopped by {who}; control {experiment.plan.control} takes all traffic"
        return self._commit(model, who, why, before, after, experiment=experiment.public())

    async def report_outcomes(self, gateway_id: str, snapshots: dict[str, dict[str, Any]]) -> None:
        """A gateway's join of outcomes since each experiment began, over every gateway's logs: {model: {"id",
        "arms": {version: ArmCounts dict}, "skipped"}}. Snapshots are totals, so any number of gateways may send."""
        now = time.time()
        tuned = {m: e.scale for m, e in self.experiments.items()}
        for model, snap in snapshots.items():
            e = self._running_experiment(model)
            if e is not None and snap.get("id") == e.id:
                arms = {str(v): ArmCounts.from_dict(c) for v, c in snap.get("arms", {}).items()}
                e.update(arms, int(snap.get("skipped", 0)), now)
        self._judge_experiments(now)
        # The tuning must survive a restart (changing it later would void the guarantee); counts are only
        # a cache of what the logs hold, so they are saved now and then.
        if tuned != {m: e.scale for m, e in self.experiments.items()} or now - self._saved_at > SAVE_COUNTS_S:
            self._save()

    def claim_join(self, gateway_id: str, root_id: str, lease_s: float) -> bool:
        """Whether this gateway joins the experiments' outcomes now. Of the gateways that share a log root (its
        id, see gateway/traffic/outcomes.py), one at a time reads all their logs: the others would read the same
        files for the same totals. It keeps the lease by claiming again within lease_s; when it stops doing so
        (it died, or released it), the next gateway of that root to ask takes over."""
        now = time.monotonic()
        holder = self._joiners.get(root_id)
        if holder is None or holder[0] == gateway_id or now > holder[1]:
            self._joiners[root_id] = (gateway_id, now + lease_s)
            return True
        return False

    def release_join(self, gateway_id: str, root_id: str) -> None:
        """The joining gateway is stopping: the next to ask takes over at once."""
        holder = self._joiners.get(root_id)
        if holder is not None and holder[0] == gateway_id:
            del self._joiners[root_id]

    def _running_experiment(self, model: str) -> Experiment | None:
        e = self.experiments.get(model)
        return e if e is not None and e.running else None

    def _running(self) -> bool:
        return any(e.running for e in self.experiments.values())

    def _judge_experiments(self, now: float) -> None:
        for model, e in list(self.experiments.items()):
            for decision in e.decide(now):
                before = self.models.get(model)
                after: dict[str, int] | None
                if decision.action == "promote" and decision.version is not None:
                    after = {decision.version: 100}
                elif decision.action == "stop":
                    after = e.weights(before)
                else:  # no result: the operator is told here and in `experiment status`; the split stays
                    after = before
                self.models = {**self.models, model: after} if after is not None else self.models
                self._commit(model, "experiment", decision.why, before, after, experiment=e.public())
            moved = e.allocate(self.models.get(model))
            if moved is not None:  # thompson: traffic follows the evidence; the test above still decides
                before, (after, why) = self.models.get(model), moved
                self.models = {**self.models, model: after}
                self._commit(model, "experiment", why, before, after, experiment=e.public())

    # --- ramp ticker -------------------------------------------------------------------------
    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while self.ramps or self._running():
            await asyncio.sleep(TICK_S)
            try:
                self._evaluate(time.time())
            except Exception:  # a bad plan must not stop every other model's ramp
                log.exception("ramp evaluation failed")
            try:
                self._judge_experiments(time.time())
            except Exception:
                log.exception("experiment evaluation failed")

    def _evaluate(self, now: float) -> None:
        for model, ramp in list(self.ramps.items()):
            action, why = ramp.verdict(now)
            if action == "hold":
                continue
            before = self.models.get(model)
            if action == "rollback":
                del self.ramps[model]
                self.models = {**self.models, model: ramp.base}
                self._commit(model, "ramp", why, before, ramp.base, rollback=True)
            elif action == "promote":
                del self.ramps[model]
                after = {ramp.plan.version: 100}
                self.models = {**self.models, model: after}
                self._commit(model, "ramp", why, before, after)
            else:
                ramp.advance(now)
                after = ramp.weights()
                self.models = {**self.models, model: after}
                self._commit(model, "ramp", why, before, after, ramp=ramp.public())

    # --- bookkeeping -------------------------------------------------------------------------
    def _commit(self, model: str, who: str, reason: str, before: Any, after: Any, **extra: Any) -> dict[str, Any]:
        self.revision += 1
        entry = {
            "revision": self.revision,
            "time": time.time(),
            "who": who,
            "reason": reason,
            "before": before,
            "after": after,
            **extra,
        }
        self.history[model] = [*self.history.get(model, []), entry][-MAX_HISTORY:]
        self._save()
        # Wake every waiting gateway, then arm a fresh event for the next change.
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return self.get()

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        if self.ramps or self._running():
            self._ensure_ticker()  # e.g. a ramp loaded from the file after a restart of Ray
        return self._changed

    def _save(self) -> None:
        self._saved_at = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "revision": self.revision,
                    "models": self.models,
                    "shadows": self.shadows,
                    "ramps": {m: r.to_dict() for m, r in self.ramps.items()},
                    "history": self.history,
                    "experiments": {m: e.to_dict() for m, e in self.experiments.items()},
                }
            )
        )
        os.replace(tmp, self.path)


TrafficTableActor = ray.remote(num_cpus=0)(TrafficTable)


def connect(path: str) -> Any:
    """The cluster's table actor, created on first use (detached: it outlives the gateway that made it)."""
    actor_class: Any = TrafficTableActor  # ray.remote hides .options from the type checker
    # On the head node (its special resource): the table must not die with the gateway (pod) that created it.
    return actor_class.options(
        name=ACTOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={"node:__internal_head__": 0.001},
    ).remote(path)
