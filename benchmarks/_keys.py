"""Which account each request of a workload goes to: uniform, Zipf, or one hot account.

Pickers return an index in ``0..n-1``; the load generator maps it to an account id. They
draw from a ``random.Random`` given to them, so a run is repeatable and two load
generator processes given different seeds send different but equally shaped traffic.
"""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Protocol

__all__ = ["HotPicker", "Picker", "UniformPicker", "ZipfPicker", "make_picker"]


class Picker(Protocol):
    n: int

    def pick(self) -> int: ...


class UniformPicker:
    def __init__(self, n: int, rng: random.Random) -> None:
        assert n >= 1
        self.n = n
        self._randrange = rng.randrange

    def pick(self) -> int:
        return self._randrange(self.n)


class ZipfPicker:
    """Rank ``k`` (1-based) drawn with weight ``1 / k**s``; index ``k - 1`` is returned, so
    account 0 is the most popular. Sampling is a binary search in the cumulative weights
    (built once: 100,000 floats), so each pick costs one random number and ~17 compares."""

    def __init__(self, n: int, rng: random.Random, s: float = 1.0) -> None:
        assert n >= 1
        assert s > 0
        self.n = n
        self.s = s
        self._random = rng.random
        self._cumulative = list(itertools.accumulate(1.0 / k**s for k in range(1, n + 1)))
        self._total = self._cumulative[-1]

    def probability(self, index: int) -> float:
        return (1.0 / (index + 1) ** self.s) / self._total

    def pick(self) -> int:
        index = bisect.bisect_left(self._cumulative, self._random() * self._total)
        # random() < 1.0, but rounding at the top end must not step past the last rank.
        return min(index, self.n - 1)


class HotPicker:
    """Account 0 takes ``hot_share`` of the requests; the rest are uniform over the others."""

    def __init__(self, n: int, rng: random.Random, hot_share: float = 0.4) -> None:
        assert n >= 2
        assert 0.0 <= hot_share <= 1.0
        self.n = n
        self.hot_share = hot_share
        self._random = rng.random
        self._randrange = rng.randrange

    def pick(self) -> int:
        if self._random() < self.hot_share:
            return 0
        return 1 + self._randrange(self.n - 1)


def make_picker(kind: str, n: int, rng: random.Random, *, zipf_s: float = 1.0,
                hot_share: float = 0.4) -> Picker:  # fmt: skip
    if kind == "uniform":
        return UniformPicker(n, rng)
    if kind == "zipf":
        return ZipfPicker(n, rng, zipf_s)
    if kind == "hot":
        return HotPicker(n, rng, hot_share)
    raise ValueError(f"unknown key distribution {kind!r}")
