"""Open-loop arrival schedules: intended send offsets (seconds from the start), lazily.

A run spread over N processes gives each one rate/N: Poisson streams superpose to a Poisson
stream, and constant streams are phase-shifted so the union stays evenly spaced.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_CHUNK = 4096


def constant_offsets(rate: float, phase: float = 0.0) -> Iterator[float]:
    """Evenly spaced offsets ``(phase + k) / rate`` for k = 0, 1, 2, ..."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    interval = 1.0 / rate
    k = 0
    while True:
        yield (phase + k) * interval
        k += 1


def poisson_offsets(rate: float, seed: int | None = None) -> Iterator[float]:
    """Offsets of a Poisson process: exponential gaps with mean ``1/rate``.

    Gaps are drawn in numpy chunks so the send loop pays one float per request, not one RNG call.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = np.random.default_rng(seed)
    base = 0.0
    while True:
        times = base + np.cumsum(rng.exponential(1.0 / rate, _CHUNK))
        yield from times.tolist()
        base = float(times[-1])


def offsets(arrival: str, rate: float, *, share: int = 0, shares: int = 1, seed: int | None = None) -> Iterator[float]:
    """The schedule for process ``share`` of ``shares`` that together send ``rate`` per second."""
    if arrival == "constant":
        return constant_offsets(rate / shares, phase=share / shares)
    if arrival == "poisson":
        return poisson_offsets(rate / shares, seed=None if seed is None else seed + share)
    raise ValueError(f"unknown arrival process {arrival!r} (expected 'poisson' or 'constant')")
