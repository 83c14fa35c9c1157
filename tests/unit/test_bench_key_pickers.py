"""The end-to-end benchmark's key pickers draw accounts with the shapes their names
promise: checked by sampling with fixed seeds and comparing frequencies with the
distributions' own probabilities, with tolerances far wider than the sampling error."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from benchmarks._keys import HotPicker, UniformPicker, ZipfPicker, make_picker

DRAWS = 200_000


def _counts(picker: object, draws: int = DRAWS) -> Counter[int]:
    pick = picker.pick  # type: ignore[attr-defined]
    return Counter(pick() for _ in range(draws))


def test_zipf_picks_rank_k_with_probability_proportional_to_one_over_k() -> None:
    n = 1_000
    picker = ZipfPicker(n, random.Random(11), s=1.0)
    counts = _counts(picker)
    harmonic = sum(1 / k for k in range(1, n + 1))
    for index in (0, 1, 2, 9, 99):
        expected = (1 / (index + 1)) / harmonic
        assert picker.probability(index) == pytest.approx(expected)
        assert counts[index] / DRAWS == pytest.approx(expected, rel=0.1)
    # The top account is drawn about twice as often as the second, ten times the tenth.
    assert counts[0] / counts[1] == pytest.approx(2.0, rel=0.1)
    assert counts[0] / counts[9] == pytest.approx(10.0, rel=0.15)
    assert min(counts) >= 0
    assert max(counts) <= n - 1


def test_zipf_over_100000_accounts_reaches_the_tail() -> None:
    picker = ZipfPicker(100_000, random.Random(5))
    counts = _counts(picker, 50_000)
    assert max(counts) <= 99_999
    # With s = 1 about half of all draws land past rank ~300: the tail is really used.
    assert sum(c for i, c in counts.items() if i >= 300) / 50_000 == pytest.approx(0.5, abs=0.05)


def test_hot_picker_sends_forty_percent_to_account_zero_and_spreads_the_rest() -> None:
    n = 1_000
    counts = _counts(HotPicker(n, random.Random(3), hot_share=0.4))
    assert counts[0] / DRAWS == pytest.approx(0.4, abs=0.01)
    others = [counts[i] for i in range(1, n)]
    assert min(counts) >= 0
    assert max(counts) <= n - 1
    # The other 60 % are uniform over the 999 others: none of them is hot.
    mean = sum(others) / len(others)
    assert mean == pytest.approx(0.6 * DRAWS / (n - 1), rel=0.01)
    assert max(others) < 1.5 * mean


def test_uniform_picker_covers_every_account_evenly() -> None:
    n = 100
    counts = _counts(UniformPicker(n, random.Random(1)), 100_000)
    assert set(counts) == set(range(n))
    assert max(counts.values()) < 1.2 * min(counts.values())


def test_the_same_seed_draws_the_same_sequence() -> None:
    first = make_picker("zipf", 10_000, random.Random(42))
    second = make_picker("zipf", 10_000, random.Random(42))
    assert [first.pick() for _ in range(100)] == [second.pick() for _ in range(100)]


def test_an_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown key distribution"):
        make_picker("pareto", 10, random.Random(0))
