"""Per-model sampling of successful requests (errors are always logged); runs on the event loop, so it is cheap."""

from __future__ import annotations

import random
from collections.abc import Mapping


class Sampler:
    def __init__(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        self._rates = dict(rates)
        self._default = self._rates.get("*", 1.0)
        self._random = random.Random(seed).random  # Mersenne Twister: ~30 ns a draw, no lock

    def keep(self, model: str, code: str) -> bool:
        if code != "OK":
            return True
        rate = self._rates.get(model, self._default)
        return rate >= 1.0 or self._random() < rate
