"""The win rate's statistics: the sequential test's error rate holds however often it looks,
and the interval brackets the rate."""

from __future__ import annotations

import math
import random

import pytest

from loraloop.trainer.win_rate import log_mixture_ratio, wilson_interval


def test_the_mixture_ratio_is_the_integral_it_claims():
    for wins, losses in [(7, 0), (10, 3), (3, 10), (40, 38)]:
        steps = 20_000
        integral = sum(
            (0.5 + (i + 0.5) / steps / 2) ** wins * (0.5 - (i + 0.5) / steps / 2) ** losses
            for i in range(steps)
        )
        integral *= 0.5 / steps
        expected = math.log(2 * integral / 0.5 ** (wins + losses))
        assert log_mixture_ratio(wins, losses) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(log_mixture_ratio(5000, 4000))


def test_equal_versions_cross_the_threshold_no_more_often_than_the_error_rate():
    """Looked at after every tenth comparison up to 300: the chance that either test ever
    fires while the versions are equally good stays under error_rate."""
    rng, threshold, runs = random.Random(7), math.log(1 / 0.05), 400
    fired_better = fired_worse = 0
    for _ in range(runs):
        wins = losses = 0
        better = worse = False
        for _look in range(30):
            for _ in range(10):
                if rng.random() < 0.5:
                    wins += 1
                else:
                    losses += 1
            better = better or log_mixture_ratio(wins, losses) >= threshold
            worse = worse or log_mixture_ratio(losses, wins) >= threshold
        fired_better += better
        fired_worse += worse
    # 0.05 plus three binomial standard deviations of 400 runs.
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert fired_better / runs <= bound and fired_worse / runs <= bound


def test_the_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(8, 10, 1.645)
    assert 0 <= low < 0.8 < high <= 1
    assert wilson_interval(0, 0, 1.645) == (0.0, 1.0)
