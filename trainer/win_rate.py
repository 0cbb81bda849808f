"""The statistics of a win rate from pairwise comparisons, as the judged gate and the rollouts
test it.

A one-sided mixture sequential probability ratio test of the candidate's win rate p against
p = 1/2: "better" puts a uniform prior on p > 1/2 (`log_mixture_ratio(wins, losses)`), "worse"
on p < 1/2 (the same with the counts swapped). Each mixture likelihood ratio is a nonnegative
martingale while the versions are equally good, so by Ville's inequality it ever reaches
1/error_rate with at most that chance however often it is looked at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log_binomial_cdf_half(k: int, n: int) -> float:
    """log P(Binomial(n, 1/2) <= k)."""
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in range(0, k + 1)
    ]
    return _log_sum_exp(terms) - n * math.log(2)


def log_mixture_ratio(wins: int, losses: int) -> float:
    """log of the likelihood ratio of a uniform prior on p in (1/2, 1] against p = 1/2,
    after `wins` and `losses`:  2 * integral_{1/2}^{1} p^w (1-p)^l dp / (1/2)^(w+l).

    The integral is B(w+1, l+1) * P(Binomial(w+l+1, 1/2) <= w) (the incomplete beta function
    at 1/2 for whole numbers), all in logs so thousands of comparisons stay finite."""
    n = wins + losses
    log_beta = math.lgamma(wins + 1) + math.lgamma(losses + 1) - math.lgamma(n + 2)
    return math.log(2) + n * math.log(2) + log_beta + _log_binomial_cdf_half(wins, n + 1)


def wilson_interval(wins: int, decided: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of the win rate at normal quantile `z`: (low, high)."""
    if decided == 0:
        return 0.0, 1.0
    rate = wins / decided
    centre = rate + z * z / (2 * decided)
    spread = z * math.sqrt(rate * (1 - rate) / decided + z * z / (4 * decided * decided))
    scale = 1 + z * z / decided
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)
