"""A running experiment: its arms' outcome statistics, the sequential tests, and the decisions they lead to.

Pure logic with the clock passed in, like ramp plans (contract/ramp.py): the traffic table actor
(serving/traffic_table.py) keeps one per model, feeds it the per-arm snapshots gateways join from the
request log and the feedback stream, and applies its decisions to the model's split (who = "experiment").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from contract.experiments.bandit import p_best, seed_of, shares
from contract.experiments.plan import ExperimentPlan
from contract.experiments.stats import Interval, Moments, difference, mean_interval, planned_samples, tuning
from contract.ramp import N_BUCKETS, Window

MAX_TIMELINE = 512  # points kept for the report's plot; thinned by half when full
DEFAULT_PLANNED = 10_000  # samples per arm the bound is tuned for when the plan gives no mde
MIN_MOVE = 2  # percentage points: a smaller change of Thompson shares is not worth a new revision


@dataclass(frozen=True)
class ArmCounts:
    """What one arm did since the experiment began, over every gateway: outcomes and serving health."""

    primary: Moments = field(default_factory=Moments)
    guard: Moments = field(default_factory=Moments)
    requests: int = 0
    failures: int = 0
    buckets: tuple[int, ...] = (0,) * N_BUCKETS

    def window(self) -> Window:
        return Window(self.requests, self.failures, list(self.buckets))

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary.to_list(),
            "guard": self.guard.to_list(),
            "requests": self.requests,
            "failures": self.failures,
            "buckets": list(self.buckets),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmCounts:
        return cls(
            Moments.from_list(d.get("primary", [0, 0, 0])),
            Moments.from_list(d.get("guard", [0, 0, 0])),
            int(d.get("requests", 0)),
            int(d.get("failures", 0)),
            tuple(int(b) for b in d.get("buckets", [0] * N_BUCKETS)),
        )


@dataclass(frozen=True)
class Decision:
    action: str  # "stop" (an arm back to control) | "promote" | "end" (no result; nothing changes)
    version: str | None
    why: str


@dataclass
class Experiment:
    model: str
    plan: ExperimentPlan
    started: float
    base: dict[str, int] | None  # the split before the experiment (for the record; decisions never go back to it)
    state: str = "running"  # running | promoted | stopped | inconclusive | ended
    arm_states: dict[str, str] = field(default_factory=dict)  # version -> running | stopped | promoted | control
    counts: dict[str, ArmCounts] = field(default_factory=dict)
    scale: float | None = None  # the confidence sequence's tuning, fixed once min_samples are in
    planned: int | None = None  # the samples per arm the bound is tuned for
    timeline: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None
    outcome: str = ""
    skipped: int = 0  # labels that could not be scored (see contract/experiments/outcomes.py)
    p_best: dict[str, float] = field(default_factory=dict)  # thompson: P(arm is best) at the last allocation

    def __post_init__(self) -> None:
        if not self.arm_states:
            self.arm_states = {v: "control" if v == self.plan.control else "running" for v in self.plan.arms}

    @property
    def id(self) -> str:
        return f"{self.model}@{self.started:.3f}"

    @property
    def running(self) -> bool:
        return self.state == "running"

    def weights(self, current: dict[str, int] | None = None) -> dict[str, int]:
        """The split with every stopped arm's share given to control."""
        weights = dict(current or self.plan.arms)
        for v, s in self.arm_states.items():
            if s == "stopped" and weights.get(v):
                weights[self.plan.control] = weights.get(self.plan.control, 0) + weights.pop(v)
        return weights

    def update(self, counts: dict[str, ArmCounts], skipped: int, now: float) -> None:
        """Takes a gateway's snapshot when it holds more outcomes than the one kept (gateways join the same logs)."""
        if sum(c.primary.n + c.requests for c in counts.values()) < sum(
            c.primary.n + c.requests for c in self.counts.values()
        ):
            return
        self.counts = {v: counts.get(v, ArmCounts()) for v in self.plan.arms}
        self.skipped = skipped
        self._record(now)

    # --- statistics ----------------------------------------------------------------------------
    def _arm(self, version: str) -> ArmCounts:
        return self.counts.get(version, ArmCounts())

    def lift(self, version: str) -> Interval:
        p = self.plan
        scale = self.scale or tuning(p.max_samples or DEFAULT_PLANNED, p.arm_alpha)
        arm, control = self._arm(version).primary, self._arm(p.control).primary
        return difference(arm, control, p.arm_alpha, scale, p.higher_is_better)

    def guard_lift(self, version: str) -> Interval | None:
        p = self.plan
        if p.guard_metric is None:
            return None
        scale = self.scale or tuning(p.max_samples or DEFAULT_PLANNED, p.arm_alpha)
        arm, control = self._arm(version).guard, self._arm(p.control).guard
        return difference(arm, control, p.arm_alpha, scale, p.guard_higher_is_better)

    def _tune(self) -> None:
        p = self.plan
        if self.scale is not None or any(self._arm(v).primary.n < p.min_samples for v in p.arms):
            return
        variance = self._arm(p.control).primary.variance
        planned = planned_samples(p.mde, variance, p.arm_alpha) if p.mde is not None else DEFAULT_PLANNED
        self.planned = min(planned, p.max_samples) if p.max_samples is not None else planned
        self.scale = tuning(self.planned, p.arm_alpha)

    def guardrail_breach(self, version: str) -> str | None:
        """Why this arm breaks a guardrail, or None."""
        p, c = self.plan, self._arm(version)
        w = c.window()
        if c.requests >= p.min_requests:
            if p.max_error_rate is not None and w.error_rate > p.max_error_rate:
                rate = f"{w.error_rate:.1%} ({c.failures}/{c.requests})"
                return f"server errors {rate} over the guardrail {p.max_error_rate:.1%}"
            if p.max_p99_ms is not None and w.p99_ms() > p.max_p99_ms:
                return f"p99 latency {w.p99_ms():.1f} ms over the guardrail {p.max_p99_ms:g} ms"
        g = self.guard_lift(version) if self.scale is not None else None
        if g is not None and g.high < -p.guard_margin:
            return (
                f"{p.guard_metric} worse than control by more than {p.guard_margin:g} "
                f"(difference {g.estimate:+.4g}, interval [{g.low:+.4g}, {g.high:+.4g}])"
            )
        return None

    # --- decisions -----------------------------------------------------------------------------
    def decide(self, now: float) -> list[Decision]:
        """What the evidence calls for now; applies each decision to the experiment's own state."""
        if not self.running:
            return []
        p, out = self.plan, []
        self._tune()
        winners: list[tuple[float, str, str]] = []
        for v in [v for v in p.treatments if self.arm_states[v] == "running"]:
            breach = self.guardrail_breach(v)
            if breach is not None:
                out.append(self._stop(v, f"arm {v} stopped: {breach}"))
                continue
            if self.scale is None:
                continue
            d = self.lift(v)
            if d.worse:
                why = f"arm {v} stopped: {p.metric} significantly worse than control {self._says(d)}"
                out.append(self._stop(v, why))
            elif d.better and self._guard_proven(v):
                winners.append((d.estimate, v, self._says(d)))
        if winners:
            _, v, says = max(winners)
            self.arm_states[v] = "promoted"
            why = f"arm {v} promoted: {p.metric} significantly better than control {says}"
            return [*out, self._end("promoted", v, why, now)]
        if all(self.arm_states[v] == "stopped" for v in p.treatments):
            why = f"every arm was stopped; control {p.control} keeps the traffic"
            return [*out, self._end("stopped", None, why, now)]
        running = [v for v in p.treatments if self.arm_states[v] == "running"]
        if p.max_samples is not None and all(self._arm(v).primary.n >= p.max_samples for v in [p.control, *running]):
            why = f"no result after {p.max_samples} outcomes per arm; nothing changed"
            return [*out, self._end("inconclusive", None, why, now)]
        if p.max_duration_s is not None and now - self.started >= p.max_duration_s:
            why = f"no result after {p.max_duration_s:g} s; nothing changed"
            return [*out, self._end("inconclusive", None, why, now)]
        return out

    def allocate(self, current: dict[str, int] | None) -> tuple[dict[str, int], str] | None:
        """Thompson sampling: new shares for control and the running arms, in proportion to the posterior chance
        that each is best, above the plan's floor; None while the plan is fixed, before every live arm has
        min_samples outcomes, or when no share would move by MIN_MOVE points or more."""
        p = self.plan
        live = [p.control, *[v for v in p.treatments if self.arm_states[v] == "running"]]
        if p.allocation != "thompson" or not self.running or any(self._arm(v).primary.n < p.min_samples for v in live):
            return None
        good = {}
        for v in live:
            m = self._arm(v).primary
            right = round(m.total)  # accuracy counts right rows, error_rate wrong ones
            good[v] = (right if p.higher_is_better else m.n - right, m.n)
        self.p_best = p_best(good, seed_of(self.id, good))
        weights = shares(self.p_best, p.min_share)
        now = current or {}
        if max(abs(weights[v] - now.get(v, 0)) for v in live) < MIN_MOVE and set(now) <= set(live):
            return None
        says = ", ".join(f"{v} {self.p_best[v]:.2f}" for v in live)
        return weights, f"thompson allocation: P(best) {says}; shares {weights} (at least {p.min_share}% each)"

    def end_by_operator(self, now: float, why: str) -> None:
        self.state, self.ended, self.outcome = "ended", now, why

    def _guard_proven(self, version: str) -> bool:
        g = self.guard_lift(version)
        return g is None or g.low > -self.plan.guard_margin

    def _stop(self, version: str, why: str) -> Decision:
        self.arm_states[version] = "stopped"
        return Decision("stop", version, why)

    def _end(self, state: str, version: str | None, why: str, now: float) -> Decision:
        self.state, self.outcome, self.ended = state, why, now
        return Decision("promote" if state == "promoted" else "end", version, why)

    def _arm_state(self, version: str) -> str:
        """An arm still running when the whole experiment ended (stopped by an operator, inconclusive, or another
        arm promoted) is shown as ended: no arm of a finished experiment runs."""
        state = self.arm_states.get(version, "running")
        return "ended" if state == "running" and not self.running else state

    def _says(self, d: Interval) -> str:
        return f"(lift {d.estimate:+.4g}, {1 - self.plan.alpha:.0%} interval [{d.low:+.4g}, {d.high:+.4g}])"

    # --- what status, report and the audit history show ------------------------------------------
    def _record(self, now: float) -> None:
        arms: dict[str, list[float | None]] = {}
        for v in self.plan.arms:
            m = self._arm(v).primary
            low, high = mean_interval(m, self.plan.arm_alpha, self.scale or tuning(DEFAULT_PLANNED, self.plan.alpha))
            arms[v] = [m.n, _num(m.mean), _num(low), _num(high)]
        self.timeline.append({"t": now, "arms": arms})
        if len(self.timeline) > MAX_TIMELINE:
            self.timeline = self.timeline[::2]

    def numbers(self) -> dict[str, Any]:
        """Per arm: n, the metric with its interval, lift against control, guardrails, state."""
        p, arms = self.plan, {}
        for v in p.arms:
            c = self._arm(v)
            low, high = mean_interval(c.primary, p.arm_alpha, self.scale or tuning(DEFAULT_PLANNED, p.alpha))
            w = c.window()
            arm: dict[str, Any] = {
                "role": "control" if v == p.control else "treatment",
                "state": self._arm_state(v),
                "n": c.primary.n,
                "metric": _num(c.primary.mean),
                "interval": [_num(low), _num(high)],
                "requests": c.requests,
                "error_rate": round(w.error_rate, 6),
                "p99_ms": _num(w.p99_ms()),
                "guardrail": self.guardrail_breach(v) or "ok",
            }
            if v != p.control:
                d = self.lift(v)
                arm["lift"] = {"estimate": _num(d.estimate), "interval": [_num(d.low), _num(d.high)]}
                g = self.guard_lift(v)
                if g is not None:
                    arm["guard_lift"] = {"estimate": _num(g.estimate), "interval": [_num(g.low), _num(g.high)]}
            if p.guard_metric is not None:
                arm["guard_metric"] = _num(c.guard.mean)
            arms[v] = arm
        if self.p_best:
            for v, chance in self.p_best.items():
                arms[v]["p_best"] = round(chance, 4)
        return {
            "arms": arms,
            "planned_samples": self.planned,
            "skipped_labels": self.skipped,
            "allocation": p.allocation,
        }

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "plan": self.plan.to_dict(),
            "state": self.state,
            "started": self.started,
            "ended": self.ended,
            "outcome": self.outcome,
            **self.numbers(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "plan": self.plan.to_dict(),
            "started": self.started,
            "base": self.base,
            "state": self.state,
            "arm_states": self.arm_states,
            "counts": {v: c.to_dict() for v, c in self.counts.items()},
            "scale": self.scale,
            "planned": self.planned,
            "timeline": self.timeline,
            "ended": self.ended,
            "outcome": self.outcome,
            "skipped": self.skipped,
            "p_best": self.p_best,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        return cls(
            model=d["model"],
            plan=ExperimentPlan.from_dict(d["plan"]),
            started=float(d["started"]),
            base=d.get("base"),
            state=d["state"],
            arm_states=dict(d["arm_states"]),
            counts={v: ArmCounts.from_dict(c) for v, c in d.get("counts", {}).items()},
            scale=d.get("scale"),
            planned=d.get("planned"),
            timeline=list(d.get("timeline", [])),
            ended=d.get("ended"),
            outcome=d.get("outcome", ""),
            skipped=int(d.get("skipped", 0)),
            p_best={str(v): float(x) for v, x in d.get("p_best", {}).items()},
        )


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: an unknown number is null."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
