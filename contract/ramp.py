"""Ramp plans: a canary's share of traffic stepped up on a schedule while its live guards hold.

Pure logic (no Ray, no clock of its own) so it is tested with a fake clock; the traffic table actor
(serving/traffic_table.py) owns the state, feeds it the gateways' live counts and applies the verdicts.

A plan moves the canary through `steps` (percent of unpinned traffic), spending at least `every_s`
seconds on each. A step is passed only with evidence: at least `min_requests` canary requests during
the step, within the guards (error rate and p99 latency). Canary requests are those the split sent to
the version; requests that named it (pinned) are counted apart, shown, and never judged. A guard
breach at any time, once the step has `min_requests` requests, rolls the model back to the split it
had before the ramp began. Reaching the last step of 100% promotes the canary.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Upper bounds (ms) of the latency buckets gateways count in; the last bucket is unbounded.
LATENCY_BOUNDS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
# Codes that count against a canary: the version failed, not the client (bad input is not its fault).
FAILURE_CODES = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
# Gateways report a version's pinned requests under this key beside the version's own. No version name holds
# an "@", and a table actor of an older release (detached, it can outlive gateway upgrades) ignores keys that
# are not its canary's version, so these counts never reach its guards.
PINNED_SUFFIX = "@pinned"


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class RampPlan:
    version: str
    steps: tuple[int, ...]
    every_s: float
    max_error_rate: float | None = None  # a fraction: 0.01 is 1%
    max_p99_ms: float | None = None
    min_requests: int = 20

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> RampPlan:
        """Validates an operator's or a job's plan; raises PlanError saying what is wrong."""
        unknown = set(raw) - {"version", "steps", "every_s", "max_error_rate", "max_p99_ms", "min_requests", "base"}
        if unknown:
            raise PlanError(f"unknown ramp plan field(s): {', '.join(sorted(unknown))}")
        try:
            version = str(raw["version"])
            if any(isinstance(s, bool) or not float(s).is_integer() for s in raw["steps"]):
                raise PlanError(f"steps must be whole percents, got {list(raw['steps'])}")
            steps = tuple(int(s) for s in raw["steps"])
            every_s = float(raw["every_s"])
            max_error_rate = None if raw.get("max_error_rate") is None else float(raw["max_error_rate"])
            max_p99_ms = None if raw.get("max_p99_ms") is None else float(raw["max_p99_ms"])
            min_requests = int(raw.get("min_requests", 20))
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                "a ramp plan needs version, steps (whole percents) and every_s (seconds); "
                f"max_error_rate, max_p99_ms and min_requests are numbers: {exc}"
            ) from None
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise PlanError(f"steps must be rising whole percents in 1..100, got {list(steps)}")
        if not math.isfinite(every_s) or every_s <= 0:
            raise PlanError("every_s must be a positive number of seconds")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise PlanError("max_error_rate is a fraction between 0 and 1 (0.01 is 1%)")
        if max_p99_ms is not None and not max_p99_ms > 0:
            raise PlanError("max_p99_ms must be positive")
        if min_requests < 0:
            raise PlanError("min_requests cannot be negative")
        return cls(version, steps, every_s, max_error_rate, max_p99_ms, min_requests)


def split_with(base: dict[str, int], version: str, percent: int) -> dict[str, int]:
    """`version` gets exactly `percent`; the other versions share the rest in proportion to their base
    weights (largest remainder, so the result is whole percents summing to exactly 100)."""
    others = {v: w for v, w in base.items() if v != version and w > 0}
    rest = 100 - percent
    if not others:
        if rest:
            raise PlanError(f"the split before the ramp gives no traffic to a version other than {version}")
        return {version: 100}
    total = sum(others.values())
    exact = {v: rest * w / total for v, w in others.items()}
    out = {v: math.floor(x) for v, x in exact.items()}
    for v in sorted(exact, key=lambda v: (out[v] - exact[v], v))[: rest - sum(out.values())]:
        out[v] += 1
    return {**out, version: percent}


@dataclass
class Window:
    """Live counts of the canary during the current step, summed over every gateway's reports: requests the
    split sent to it (the guards' evidence), and pinned requests apart (shown, not judged)."""

    requests: int = 0
    failures: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    pinned_requests: int = 0
    pinned_failures: int = 0

    def add(self, requests: int, failures: int, buckets: list[int]) -> None:
        self.requests += requests
        self.failures += failures
        for i, n in enumerate(buckets[:N_BUCKETS]):
            self.buckets[i] += n

    def add_pinned(self, requests: int, failures: int) -> None:
        self.pinned_requests += requests
        self.pinned_failures += failures

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def p99_ms(self) -> float:
        """The 99th percentile, interpolated linearly inside its bucket (as Prometheus' histogram_quantile
        does); inf when it falls in the open last bucket."""
        total = sum(self.buckets)
        if not total:
            return 0.0
        rank, seen = 0.99 * total, 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                if i >= len(LATENCY_BOUNDS_MS):
                    return math.inf
                low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
                return low + (LATENCY_BOUNDS_MS[i] - low) * (rank - seen) / n
            seen += n
        return math.inf


def latency_bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


@dataclass
class Ramp:
    """A running plan: which step it is on, since when, and what the canary did during the step."""

    plan: RampPlan
    base: dict[str, int]  # the split before the ramp: where a rollback goes
    step: int
    step_started: float
    window: Window = field(default_factory=Window)

    def weights(self) -> dict[str, int]:
        return split_with(self.base, self.plan.version, self.plan.steps[self.step])

    def verdict(self, now: float) -> tuple[str, str]:
        """("hold" | "advance" | "promote" | "rollback", why)."""
        p, w = self.plan, self.window
        percent = p.steps[self.step]
        if w.requests >= max(p.min_requests, 1):
            if p.max_error_rate is not None and w.error_rate > p.max_error_rate:
                return "rollback", (
                    f"canary {p.version} error rate {w.error_rate:.1%} over the plan's "
                    f"{p.max_error_rate:.1%} at {percent}% ({w.failures}/{w.requests} requests)"
                )
            if p.max_p99_ms is not None and w.p99_ms() > p.max_p99_ms:
                return "rollback", (
                    f"canary {p.version} p99 latency {w.p99_ms():.1f} ms over the plan's "
                    f"{p.max_p99_ms:g} ms at {percent}% ({w.requests} requests)"
                )
        if now - self.step_started < p.every_s:
            return "hold", f"at {percent}% for {p.every_s:g} s"
        if w.requests < p.min_requests:
            pinned = f"; {w.pinned_requests} pinned not counted" if w.pinned_requests else ""
            return "hold", f"at {percent}%, waiting for {p.min_requests} canary requests (has {w.requests}{pinned})"
        if self.step + 1 < len(p.steps):
            return "advance", f"{percent}% held its guards over {w.requests} requests; next {p.steps[self.step + 1]}%"
        if percent == 100:
            return "promote", f"canary {p.version} held its guards at every step; promoted"
        return "hold", f"plan complete at {percent}%"

    def advance(self, now: float) -> None:
        self.step += 1
        self.step_started = now
        self.window = Window()

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "base": dict(self.base),
            "step": self.step,
            "step_started": self.step_started,
            "window": asdict(self.window),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ramp:
        plan = d["plan"]
        return cls(
            RampPlan(**{**plan, "steps": tuple(plan["steps"])}),
            dict(d["base"]),
            int(d["step"]),
            float(d["step_started"]),
            Window(**d["window"]),
        )

    def public(self) -> dict[str, Any]:
        """What `traffic show` prints and what gateways need (they collect live counts of ramped versions)."""
        w = self.window
        p99 = w.p99_ms()
        return {
            **asdict(self.plan),
            "percent": self.plan.steps[self.step],
            "step": self.step,
            "step_started": self.step_started,
            "base": dict(self.base),
            "live": {
                "requests": w.requests,
                "failures": w.failures,
                "error_rate": round(w.error_rate, 6),
                "p99_ms": None if math.isinf(p99) else round(p99, 3),
                "pinned": {"requests": w.pinned_requests, "failures": w.pinned_failures},
            },
        }
