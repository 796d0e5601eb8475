"""How the retraining job proposes the version it registered: a guarded ramp, or an experiment on real outcomes
against the serving version when the model's clients post labels back (docs/RETRAINING.md, "Canary").

Pure but for `propose`, which calls the cluster's traffic table (serving/traffic_table.py) with the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from contract.experiments.plan import ExperimentPlan
from contract.ramp import RampPlan

Kind = Literal["ramp", "experiment"]
KINDS: tuple[Kind, ...] = ("ramp", "experiment")
# The job retrains classifiers: their labels are class indexes, judged by whether the predicted class is right.
METRIC = "accuracy"


@dataclass(frozen=True)
class Feedback:
    """What the job's window says about the model's outcome feedback."""

    outcomes: int  # labelled rows whose logged answer can be scored (labels joined to answers logged with outputs)
    latest_label: float | None  # when the newest label of the model was written (unix seconds), None if never


@dataclass(frozen=True)
class ExperimentOptions:
    """The experiment the job starts instead of a ramp (`--experiment-*` flags)."""

    percent: int = 50  # the new version's share of the model's traffic; the serving version keeps the rest
    mde: float | None = 0.02
    max_samples: int | None = 50_000
    max_duration_s: float | None = 7 * 24 * 3600.0
    min_outcomes: int = 100  # scored rows in the window that show labels flow back and join
    max_label_age_s: float = 24 * 3600.0  # the newest label at most this old: labels still come


@dataclass(frozen=True)
class Proposal:
    kind: Kind
    plan: dict[str, Any]
    why: str  # why this kind: what the summary and the table's audit history say

    def summary(self) -> dict[str, Any]:
        return {"canary": {"kind": self.kind, "why": self.why}, self.kind: self.plan}


def has_outcome_feedback(feedback: Feedback, options: ExperimentOptions, now: float) -> tuple[bool, str]:
    """Whether an experiment on this model would get outcomes to decide on, and the numbers that say so."""
    if feedback.outcomes < options.min_outcomes:
        return False, (
            f"{feedback.outcomes} labelled row(s) in the window have a logged answer to score, "
            f"at least {options.min_outcomes} are needed (--experiment-min-outcomes)"
        )
    age = now - feedback.latest_label if feedback.latest_label is not None else float("inf")
    if age > options.max_label_age_s:
        return False, (
            f"the newest label is {age:.0f} s old, over --experiment-max-label-age-s {options.max_label_age_s:g}: "
            "labels no longer come back"
        )
    return True, f"{feedback.outcomes} labelled row(s) with a scored answer in the window, newest label {age:.0f} s old"


def ramp_plan(
    version: str,
    steps: Sequence[int],
    every_s: float,
    max_error_rate: float | None,
    max_p99_ms: float | None,
    min_requests: int,
    parent: str,
) -> dict[str, Any]:
    """The plan for the table's start_ramp (contract/ramp.py). `base` only counts when the model has no split
    yet: then the ramp starts from the parent taking all traffic, as it did when the drift was seen."""
    return {
        "version": version,
        "steps": list(steps),
        "every_s": every_s,
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
        "min_requests": min_requests,
        "base": {parent: 100},
    }


def experiment_plan(
    version: str,
    parent: str,
    options: ExperimentOptions,
    max_error_rate: float | None,
    max_p99_ms: float | None,
    min_requests: int,
) -> dict[str, Any]:
    """The plan for the table's start_experiment (contract/experiments/plan.py): the new version against the
    parent, the version that was serving when the drift was seen, as control."""
    return {
        "arms": {parent: 100 - options.percent, version: options.percent},
        "control": parent,
        "metric": METRIC,
        "mde": options.mde,
        "max_samples": options.max_samples,
        "max_duration_s": options.max_duration_s,
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
        "min_requests": min_requests,
    }


def choose(
    mode: Kind,
    feedback: Feedback,
    now: float,
    ramp: dict[str, Any],
    experiment: dict[str, Any],
    options: ExperimentOptions,
) -> Proposal:
    """The ramp unless an experiment is asked for and the model has outcome feedback to judge it on."""
    RampPlan.parse(ramp)  # both plans are checked here, before anything is deployed
    ExperimentPlan.parse(experiment)
    if mode == "ramp":
        return Proposal("ramp", ramp, "a guarded ramp (--canary ramp)")
    ok, numbers = has_outcome_feedback(feedback, options, now)
    if ok:
        return Proposal("experiment", experiment, f"an experiment on {METRIC}: {numbers}")
    return Proposal("ramp", ramp, f"a guarded ramp: no outcome feedback to run an experiment on ({numbers})")


def propose(
    table: Any, model: str, proposal: Proposal, who: str, reason: str, get: Callable[[Any], Any] | None = None
) -> Any:
    """Asks the cluster's traffic table to start the proposal's ramp or experiment; returns what it answers."""
    if get is None:
        import ray

        def get(ref: Any) -> Any:
            return ray.get(ref, timeout=60)

    method = "start_ramp" if proposal.kind == "ramp" else "start_experiment"
    try:
        start = getattr(table, method)
    except AttributeError:
        takes = "ramp plans" if proposal.kind == "ramp" else "experiments"
        raise RuntimeError(
            f"this cluster's traffic table takes no {takes} (it has no {method}): the version is registered "
            "and deployed; upgrade the gateway, or move traffic with `gateway traffic`"
        ) from None
    return get(start.remote(model, proposal.plan, who, reason))


def table_view(answer: Any, model: str, kind: Kind) -> Any:
    """What of the table's answer (the whole table) concerns this model."""
    if not isinstance(answer, dict):
        return answer
    plural = "ramps" if kind == "ramp" else "experiments"
    return {
        "revision": answer.get("revision"),
        "weights": answer.get("models", {}).get(model),
        kind: answer.get(plural, {}).get(model),
    }
