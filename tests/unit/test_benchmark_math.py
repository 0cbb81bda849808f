"""The benchmarks' own arithmetic: workloads, percentiles, ratios within rounds, flags.

The benchmarks themselves run for minutes (`make bench`); what they compute from their
measurements is checked here, on made-up figures, so a wrong ratio cannot hide in a table.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from loraloop.trainer.transfers.distillation import TransferFigures, TransferResult

from ..benchmarks import bench_adaptation, bench_adapters, bench_transfer, common
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
    uniform = Counter(
        model
        for model, _ in bench_adapters.requests_for(Workload("loraloop", 8), 64, round_index=0)
    )
    assert set(uniform.values()) == {8} and len(uniform) == 8

    zipf = Counter(
        model
        for model, _ in bench_adapters.requests_for(
            Workload("loraloop", 128, zipf=True), 2000, round_index=0
        )
    )
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
    return {
        "requests": 8,
        "output_tokens": 256,
        "wall_s": 256 / tokens_per_s,
        "tokens_per_s": tokens_per_s,
        "busy": {"clients": 0.1, "loraloop API": 0.2, "loraloop engine": 1.5},
        "ttft_ms_p50": ttft_ms,
        "ttft_ms_p99": ttft_ms * 2,
        "tpot_ms_p50": tpot_ms,
        "tpot_ms_p99": tpot_ms * 2,
    }


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
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "1024",
        "--kv-cache-gib",
        "1.0",
        "--max-loras",
        "8",
    ]


# --- Carrying adapters to a new base (bench_transfer) ----------------------------------------


def _transfer_result(steps: int, seconds: float) -> TransferResult:
    figures = TransferFigures(0.0, 0.0, 1)  # distill's own split: not what the rows report
    return TransferResult(
        figures,
        figures,
        train_prompts=8,
        held_out_prompts=1,
        steps=steps,
        final_loss=0.5,
        seconds=seconds,
    )


def test_transfer_rows_compare_the_student_with_the_successor_base():
    base = TransferFigures(mean_kl=4.0, agreement=0.25, positions=100)
    student = TransferFigures(mean_kl=1.0, agreement=0.75, positions=100)
    firsts = {"teacher": [7, 7, 7, 7], "student": [7, 7, 7, 3], "base": [3, 7, 3, 3]}

    row = bench_transfer.count_row(8, _transfer_result(18, 3.0), student, base, firsts)

    assert row["kl_ratio"] == 0.25 and row["agreement_gain"] == 0.5
    assert (row["first_token"], row["first_token_base"]) == (0.75, 0.25)
    assert (row["prompts"], row["steps"], row["seconds"]) == (8, 18, 3.0)


def test_transfer_summary_spreads_each_arm_and_count_over_the_teachers():
    rows = [
        {
            "arm": arm,
            "prompts": count,
            "kl": kl,
            "kl_ratio": kl / 4,
            "agreement": 0.5,
            "agreement_gain": gain,
            "first_token": 1.0,
            "first_token_base": 0.0,
            "seconds": 2.0,
            "cpu_seconds": 3.0,
        }
        for arm, count, kl, gain in (
            ("recipe", 8, 2.0, 0.1),
            ("recipe", 16, 0.5, 0.4),
            ("equal steps", 8, 0.7, 0.2),
            ("recipe", 8, 1.0, 0.3),
        )
    ]

    summary = bench_transfer.by_count(rows)

    assert list(summary) == [("recipe", 8), ("recipe", 16), ("equal steps", 8)]
    assert summary["recipe", 8]["kl"] == (1.5, 1.0, 2.0)
    assert summary["recipe", 8]["agreement_gain"] == pytest.approx((0.2, 0.1, 0.3))
    assert summary["recipe", 16]["kl_ratio"] == (0.125, 0.125, 0.125)
    assert summary["equal steps", 8]["kl"] == (0.7, 0.7, 0.7)
    assert "| recipe | 8 | 0.38 (0.25-0.50) | 0.50 (0.50-0.50) | 0.20 (0.10-0.30) |" in (
        bench_transfer.summary_table(summary)
    )


def test_equal_steps_give_every_count_the_largest_counts_steps():
    settings = bench_transfer.SETTINGS  # 6 epochs, 5 continuations a prompt, batches of 16
    assert bench_transfer.arm_settings("recipe", 8, 64) == settings
    for count, epochs in ((8, 40), (16, 24), (32, 12), (64, 6)):
        equal = bench_transfer.arm_settings("equal steps", count, 64)
        assert equal.epochs == epochs
        assert equal.epochs * -(-count * 5 // 16) == 120  # 64 prompts: 20 steps an epoch
        assert equal == dataclasses.replace(settings, epochs=epochs)


def test_each_adaptation_round_reports_the_answers_length_beside_the_reward():
    task = bench_adaptation.TASKS["short"]
    questions = len(bench_adaptation.HELD_OUT)
    short = [["yes."] * 2 for _ in range(questions)]
    long = [["yes and then some more words."] * 2 for _ in range(questions)]
    figures = bench_adaptation.oracle_figures(task, long, short)
    assert figures["mean_words"] == 6.0
    assert bench_adaptation.oracle_figures(task, short, short)["mean_words"] == 1.0


def test_the_new_oracles_reward_a_form_and_a_content_item():
    no_repeats, number = bench_adaptation.TASKS["no_repeats"], bench_adaptation.TASKS["number"]
    assert no_repeats.oracle("q", "the sun is light.") == 1.0
    assert no_repeats.oracle("q", "the sun is the light.") == 0.0
    assert no_repeats.oracle("q", "") == 0.0
    assert number.oracle("q", "seven people came.") == 1.0
    assert number.oracle("q", "someone came, tenant.") == 0.0


def adaptation_tenant(arm: str, rewards: list[float], statuses: list[str]):
    rows = [
        {"round": n, "reward": r, "reward_low": r - 0.05, "kl_from_base": 0.1, "status": s}
        for n, (r, s) in enumerate(zip(rewards, statuses, strict=True))
    ]
    arm_ = next(a for a in bench_adaptation.ARMS if a.name == arm)
    return bench_adaptation.Tenant(
        bench_adaptation.TASKS["short"], arm_, f"short/{arm}", "k", rows=rows
    )


def test_adaptation_goals_count_gains_per_arm_and_false_promotions():
    tenants = [
        adaptation_tenant("defaults", [0.2, 0.6, 0.4], ["v1", "promoted", "promoted"]),
        adaptation_tenant("online", [0.2, 0.3, 0.3], ["v1", "rejected", "rejected"]),
    ]
    met = bench_adaptation.goals(tenants, max_kl=4.0)
    assert met["gain_over_v1"]["defaults"]["short"] == pytest.approx(0.2)
    assert met["tasks_meeting_gain"] == {"defaults": 0, "online": 0}
    assert met["false_promotions"] == ["short/defaults round 2"]  # 0.4 under [0.55, ...]
    assert met["online_minus_offline"] == {} and not met["met"]["no_false_promotion"]
