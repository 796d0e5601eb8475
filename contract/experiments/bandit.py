"""Thompson-sampling allocation: the share of traffic each arm of a running experiment gets, from Beta posteriors.

Pure numpy, called by the experiment (contract/experiments/experiment.py) at each evaluation of the traffic table;
it moves traffic, never decides: promotion and stopping stay with the always-valid test.
"""

from __future__ import annotations

import hashlib

import numpy as np

DRAWS = 20_000  # posterior draws per evaluation: P(best) to about +-0.4 percentage points


def p_best(good: dict[str, tuple[int, int]], seed: int, draws: int | None = None) -> dict[str, float]:
    """P(arm has the highest success rate) under independent Beta(1 + good, 1 + n - good) posteriors.

    `good` maps an arm to (good outcomes, outcomes). Seeded by the caller from the counts, so the same evidence
    always gives the same shares (a table that evaluates every second changes the split only when counts move)."""
    arms, draws = list(good), draws or DRAWS
    rng = np.random.default_rng(seed)
    samples = np.stack([rng.beta(1 + g, 1 + max(n - g, 0), draws) for g, n in good.values()])
    wins = np.bincount(samples.argmax(axis=0), minlength=len(arms))
    return {a: float(w) / draws for a, w in zip(arms, wins, strict=True)}


def shares(p: dict[str, float], floor: int) -> dict[str, int]:
    """Whole percents summing to 100: every arm gets `floor`, the rest is split in proportion to P(best)
    (largest remainders; ties go to the earlier arm)."""
    free = 100 - floor * len(p)
    raw = {a: free * v for a, v in p.items()}
    out = {a: floor + int(r) for a, r in raw.items()}
    left = 100 - sum(out.values())
    for a in sorted(raw, key=lambda a: -(raw[a] - int(raw[a])))[:left]:
        out[a] += 1
    return out


def seed_of(experiment_id: str, good: dict[str, tuple[int, int]]) -> int:
    text = experiment_id + "|" + ";".join(f"{a}:{g}/{n}" for a, (g, n) in sorted(good.items()))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
