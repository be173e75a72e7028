"""Fast, deterministic scalar random draws for the shelf generator, buffered from a numpy Generator."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np


class Rand:
    """Fast scalar draws for the many small random choices, buffered from a numpy Generator (deterministic)."""

    def __init__(self, gen: np.random.Generator, block: int = 1024):
        self.gen = gen
        self.random: Callable[[], float] = _uniform_stream(gen, block).__next__
        """A float in [0, 1)."""

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def integers(self, a: int, b: int | None = None) -> int:
        """An int in [a, b) (or [0, a) with one argument)."""
        if b is None:
            a, b = 0, a
        return min(b - 1, a + int((b - a) * self.random()))

    def geometric(self, p: float) -> int:
        return 1 + int(math.log(max(1e-12, 1.0 - self.random())) / math.log(1.0 - p))


def _uniform_stream(gen: np.random.Generator, block: int) -> Iterator[float]:
    while True:
        yield from gen.random(block).tolist()


def as_rand(rng: np.random.Generator | Rand) -> Rand:
    return rng if isinstance(rng, Rand) else Rand(rng)

