"""The benchmarks' own arithmetic: workloads, percentiles, ratios within rounds, flags.

The benchmarks themselves run for minutes (`make bench`); what they compute from their
measurements is checked here, on made-up figures, so a wrong ratio cannot hide in a table.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from ..benchmarks import bench_adapters, common
from ..benchmarks.bench_adapters import WORKLOADS, Workload


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert common.percentile(values, 50) == 50
    assert common.percentile(values, 99) == 99
    assert common.percentile(values, 100) == 100
    assert common.percentile([7.0], 99) == 7
    assert math.isnan(common.percentile([], 50))


def test_spread_ignores_missing_figures():
    assert common.spread([1.0, 3.0, float("nan"), 2.0]) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in common.spread([]))
    assert common.format_spread(0.5, 0.25, 0.75) == "0.50 (0.25-0.75)"


def test_uniform_traffic_spreads_evenly_and_zipf_is_skewed():
    uniform = Counter(model for model, _ in bench_adapters.requests_for(
        Workload("loraloop", 8), 64, round_index=0))
    assert set(uniform.values()) == {8} and len(uniform) == 8

    zipf = Counter(model for model, _ in bench_adapters.requests_for(
        Workload("loraloop", 128, zipf=True), 2000, round_index=0))
    ranked = [zipf[name] for name in bench_adapters.adapter_names(128)]
    # Zipf(1.1) over 128: the top adapter draws about 23% of requests, the top 8 about 57%.
    assert 0.19 < ranked[0] / 2000 < 0.27
    assert 0.5 < sum(ranked[:8]) / 2000 < 0.64
    assert ranked[0] > ranked[10] > ranked[100]


def test_rounds_get_new_messages_and_workloads_of_a_round_share_them():
    first = [m for _, m in bench_adapters.requests_for(Workload("loraloop", 0), 16, 0)]
    same_round = [m for _, m in bench_adapters.requests_for(Workload("raw", 8), 16, 0)]
    next_round = [m for _, m in bench_adapters.requests_for(Workload("loraloop", 0), 16, 1)]
    assert first == same_round
    assert not set(first) & set(next_round)


def _run(tokens_per_s: float, tpot_ms: float = 10.0, ttft_ms: float = 50.0) -> dict:
    return {"requests": 8, "output_tokens": 256, "wall_s": 256 / tokens_per_s,
            "tokens_per_s": tokens_per_s,
            "busy": {"clients": 0.1, "loraloop API": 0.2, "loraloop engine": 1.5},
            "ttft_ms_p50": ttft_ms, "ttft_ms_p99": ttft_ms * 2,
            "tpot_ms_p50": tpot_ms, "tpot_ms_p99": tpot_ms * 2}


def test_ratios_are_taken_within_each_round():
    # The machine is twice as fast in round 2; adapters cost half the throughput in both.
    runs = {w.label: [_run(100.0), _run(200.0)] for w in WORKLOADS}
    runs[Workload("loraloop", 8).label] = [_run(50.0, tpot_ms=20), _run(100.0, tpot_ms=20)]
    runs[Workload("raw", 8).label] = [_run(40.0, ttft_ms=25), _run(125.0, ttft_ms=25)]

    summary = bench_adapters.aggregate(runs)

    eight = summary[Workload("loraloop", 8).label]
    assert eight["tokens_per_s_vs_base"] == (0.5, 0.5, 0.5)
    assert eight["tokens_per_s"] == 75.0
    assert eight["tpot_p50_vs_base"] == (2.0, 2.0, 2.0)
    raw = summary[Workload("raw", 8).label]
    assert raw["ours_over_this_tokens_per_s"] == pytest.approx((1.025, 0.8, 1.25))
    assert raw["ours_over_this_ttft_p50"] == (2.0, 2.0, 2.0)
    tables = bench_adapters.tables(summary)
    assert "| 8 adapters | 75 | 0.50 (0.50-0.50) |" in tables[0]


def test_cli_flags_follow_the_settings():
    settings = common.engine_settings("tiny", max_loras=8)
    assert common.cli_flags(settings) == [
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
        "--kv-cache-gib", "1.0", "--max-loras", "8"]
