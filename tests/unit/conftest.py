"""Shared fixtures of the unit tests: no Ray, no network, no real clocks."""

from __future__ import annotations

import pytest


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
