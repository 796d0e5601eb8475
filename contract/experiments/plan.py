"""Experiment plans: the arms, the metric, the guardrails and the limits an operator (or a job) asks for.

Validated here, in pure code, by both the gateway that accepts a plan and the traffic table actor that runs it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from contract.experiments.outcomes import LOWER_IS_BETTER, METRICS
from contract.ramp import PlanError

FIELDS = frozenset(
    {
        "arms",
        "control",
        "metric",
        "output",
        "higher_is_better",
        "mde",
        "alpha",
        "min_samples",
        "max_samples",
        "max_duration_s",
        "max_error_rate",
        "max_p99_ms",
        "min_requests",
        "guard_metric",
        "guard_margin",
        "allocation",
        "min_share",
    }
)
ALLOCATIONS = ("fixed", "thompson")
"""fixed: arms keep their planned shares until a decision; thompson: shares follow P(arm is best) (binary metrics)."""
BINARY = frozenset({"accuracy", "error_rate"})


@dataclass(frozen=True)
class ExperimentPlan:
    arms: dict[str, int]  # version -> whole percent of the model's unpinned traffic
    control: str
    metric: str
    output: str | None = None  # the output the metric reads; default: found by shape and type
    higher_is_better: bool = True
    mde: float | None = None  # the smallest difference worth finding, in the metric's units
    alpha: float = 0.05  # the chance of any wrong call, over all arms and every look
    min_samples: int = 100  # outcomes per arm before the statistics may decide
    max_samples: int | None = None  # outcomes per arm after which the experiment ends without a result
    max_duration_s: float | None = None
    max_error_rate: float | None = 0.05  # server errors (fraction) beyond which an arm is stopped
    max_p99_ms: float | None = None
    min_requests: int = 20  # requests of an arm before its error and latency guardrails are judged
    guard_metric: str | None = None  # a second metric that must not get worse by more than guard_margin
    guard_margin: float = 0.0
    guard_higher_is_better: bool = field(default=True)
    allocation: str = "fixed"
    min_share: int = 10  # with thompson: every arm keeps at least this percent, so control keeps its data

    @property
    def treatments(self) -> list[str]:
        return [v for v in self.arms if v != self.control]

    @property
    def arm_alpha(self) -> float:
        """Bonferroni: each comparison with control gets an equal share of alpha."""
        return self.alpha / max(len(self.treatments), 1)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ExperimentPlan:
        """Validates an operator's or a job's plan; raises PlanError saying what is wrong."""
        unknown = set(raw) - FIELDS - {"guard_higher_is_better"}
        if unknown:
            raise PlanError(f"unknown experiment field(s): {', '.join(sorted(unknown))}")
        try:
            arms = {str(v): int(w) for v, w in dict(raw["arms"]).items()}
            metric = str(raw["metric"])
            control = str(raw.get("control") or next(iter(arms), ""))
            guard = None if raw.get("guard_metric") is None else str(raw["guard_metric"])

            def number(key: str, default: float | None) -> float | None:
                return default if raw.get(key) is None else float(raw[key])

            plan = cls(
                arms=arms,
                control=control,
                metric=metric,
                output=None if raw.get("output") is None else str(raw["output"]),
                higher_is_better=bool(raw.get("higher_is_better", metric not in LOWER_IS_BETTER)),
                mde=number("mde", None),
                alpha=float(raw.get("alpha", 0.05)),
                min_samples=int(raw.get("min_samples", 100)),
                max_samples=None if raw.get("max_samples") is None else int(raw["max_samples"]),
                max_duration_s=number("max_duration_s", None),
                # Absent: the default guardrail; null: no error-rate guardrail at all.
                max_error_rate=number("max_error_rate", None) if "max_error_rate" in raw else 0.05,
                max_p99_ms=number("max_p99_ms", None),
                min_requests=int(raw.get("min_requests", 20)),
                guard_metric=guard,
                guard_margin=float(raw.get("guard_margin", 0.0)),
                guard_higher_is_better=bool(raw.get("guard_higher_is_better", guard not in LOWER_IS_BETTER)),
                allocation=str(raw.get("allocation") or "fixed"),
                min_share=int(raw.get("min_share", 10)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                "an experiment needs arms ({version: percent}) and a metric; the other fields are numbers "
                f"(docs/EXPERIMENTS.md): {exc}"
            ) from None
        plan.check()
        return plan

    def check(self) -> None:
        if len(self.arms) < 2:
            raise PlanError("an experiment needs at least two arms (a control and a version to compare with it)")
        if any(w < 0 or w > 100 for w in self.arms.values()) or sum(self.arms.values()) != 100:
            raise PlanError(f"arm weights must be whole percents summing to 100, got {self.arms}")
        if any(w == 0 for w in self.arms.values()):
            raise PlanError("every arm needs a weight above 0 (an arm without traffic cannot be judged)")
        if self.control not in self.arms:
            raise PlanError(f"the control version '{self.control}' is not one of the arms {sorted(self.arms)}")
        for name in (self.metric, self.guard_metric):
            if name is not None and name not in METRICS:
                raise PlanError(f"unknown metric '{name}'; expected one of {', '.join(METRICS)}")
        if not 0 < self.alpha < 0.5:
            raise PlanError("alpha is the error level, a fraction between 0 and 0.5 (0.05 is 5%)")
        if self.mde is not None and not (math.isfinite(self.mde) and self.mde > 0):
            raise PlanError("mde (the minimum detectable effect) must be a positive number in the metric's units")
        if self.min_samples < 2:
            raise PlanError("min_samples must be at least 2")
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise PlanError("max_samples must be at least min_samples")
        if self.max_samples is None and self.max_duration_s is None:
            raise PlanError("give the experiment an end: max_samples (per arm) or max_duration_s, or both")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise PlanError("max_duration_s must be a positive number of seconds")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise PlanError("max_error_rate is a fraction between 0 and 1 (0.01 is 1%)")
        if self.max_p99_ms is not None and not self.max_p99_ms > 0:
            raise PlanError("max_p99_ms must be positive")
        if self.min_requests < 1:
            raise PlanError("min_requests must be at least 1")
        if self.guard_margin < 0 or not math.isfinite(self.guard_margin):
            raise PlanError("guard_margin is how much worse the guard metric may get: a number >= 0")
        if self.allocation not in ALLOCATIONS:
            raise PlanError(f"unknown allocation '{self.allocation}'; expected one of {', '.join(ALLOCATIONS)}")
        if self.allocation == "thompson":
            if self.metric not in BINARY:
                raise PlanError("thompson allocation needs a right/wrong metric: accuracy or error_rate")
            if self.min_share < 1 or self.min_share * len(self.arms) > 100:
                raise PlanError(
                    f"min_share is the percent every arm keeps: at least 1, and at most {100 // len(self.arms)} "
                    f"for {len(self.arms)} arms"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentPlan:
        return cls(**{**d, "arms": {str(k): int(v) for k, v in d["arms"].items()}})
