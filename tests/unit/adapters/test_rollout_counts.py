"""Time per output token as rollout counts keep it: fixed buckets, and the p95 read back."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loraloop.adapters.rollouts.counts import (
    TPOT_BUCKETS,
    TPOT_EDGES_MS,
    p95_time_per_token_ms,
    time_per_token_quantile_ms,
    tpot_bucket,
)


def test_a_time_falls_in_the_first_bucket_whose_edge_holds_it():
    assert TPOT_BUCKETS[0] == "tpot_le_1" and TPOT_BUCKETS[-1] == "tpot_le_inf"
    assert len(TPOT_BUCKETS) == len(TPOT_EDGES_MS) + 1
    assert [tpot_bucket(ms) for ms in (0.2, 1, 1.01, 999, 1000, 1000.5, 60_000)] == [
        "tpot_le_1",
        "tpot_le_1",
        "tpot_le_2",
        "tpot_le_1000",
        "tpot_le_1000",
        "tpot_le_inf",
        "tpot_le_inf",
    ]


def test_p95_is_read_linearly_within_its_bucket():
    assert p95_time_per_token_ms({"tpot_le_10": 100}) == pytest.approx(7 + 3 * 0.95)
    # 90 fast requests and 10 slow ones: the 95th is halfway into the slow ones' bucket.
    assert p95_time_per_token_ms({"tpot_le_5": 90, "tpot_le_50": 10}) == pytest.approx(40)
    assert p95_time_per_token_ms({"tpot_le_1": 20}) == pytest.approx(0.95)


def test_p95_ignores_other_counters_and_says_none_without_timings():
    counts = {"requests": 500, "errors": 3, "empty": 1}
    assert p95_time_per_token_ms(counts) is None
    assert p95_time_per_token_ms({**counts, "tpot_le_20": 4}) == pytest.approx(15 + 5 * 0.95)


def test_p95_beyond_the_last_edge_reads_as_that_edge():
    assert p95_time_per_token_ms({"tpot_le_inf": 3, "tpot_le_2": 1}) == 1000.0


def test_p95_lies_in_the_bucket_of_the_true_p95():
    rng = random.Random(7)
    samples = sorted(rng.lognormvariate(3, 0.8) for _ in range(2000))  # ms, around 20
    counts = Counter(tpot_bucket(ms) for ms in samples)
    true_p95 = samples[int(0.95 * len(samples)) - 1]
    bucket = TPOT_BUCKETS.index(tpot_bucket(true_p95))
    lower = TPOT_EDGES_MS[bucket - 1] if bucket else 0
    assert lower <= p95_time_per_token_ms(counts) <= TPOT_EDGES_MS[bucket]


def test_other_quantiles_and_bad_ones():
    counts = {"tpot_le_3": 50, "tpot_le_5": 50}
    assert time_per_token_quantile_ms(counts, 0.5) == pytest.approx(3)
    assert time_per_token_quantile_ms(counts, 1) == pytest.approx(5)
    with pytest.raises(ValueError, match="quantile"):
        time_per_token_quantile_ms(counts, 0)
