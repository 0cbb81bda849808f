"""The analysis at each rollout step: each decision (advance, wait, roll back) comes with its
cause and figures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loraloop.adapters.rollout_policy import Guards, RolloutPolicy, RolloutStep, WatchWindow
from loraloop.adapters.rollouts.book import RolloutRecord, StepEvidence
from loraloop.adapters.rollouts.counts import tpot_bucket
from loraloop.trainer.rollouts.analysis import decide

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
PLAN = RolloutPolicy(
    steps=[
        RolloutStep(percent=0, min_requests=10, min_comparisons=8, max_seconds=600),
        RolloutStep(percent=10, min_requests=10, min_comparisons=8, max_seconds=600),
    ],
    error_rate=0.05,
    guards=Guards(min_requests=20),
    watch=WatchWindow(max_seconds=900),
)


def rollout(step: int = 0, *, elapsed_s: float = 60, plan: RolloutPolicy = PLAN) -> RolloutRecord:
    started = NOW - timedelta(seconds=elapsed_s)
    return RolloutRecord(
        1,
        "acme/support",
        2,
        1,
        "active",
        step,
        started,
        plan,
        {},
        "a",
        None,
        None,
        started,
        "op",
        None,
    )


def evidence(wins=0, losses=0, ties=0, *, counts=None, scores=None) -> StepEvidence:
    verdicts = {"candidate": wins, "baseline": losses, "tie": ties}
    return StepEvidence(verdicts, 0, counts or {1: {"requests": 30}}, scores or {})


def test_a_clearly_better_candidate_advances_after_few_comparisons():
    decision = decide(rollout(), evidence(wins=8, ties=2), NOW)
    assert decision.action == "advance" and decision.cause is None
    figures = decision.record()
    assert figures["wins"] == 8 and figures["log_lr_better"] >= figures["threshold"]
    assert figures["win_rate"] == 1.0 and 0.6 < figures["win_rate_low"] < 1.0
    assert "significantly better" in figures["reason"]


def test_until_the_minimums_are_met_it_waits_and_says_why():
    short = decide(rollout(), evidence(wins=6, counts={1: {"requests": 4}}), NOW)
    assert short.action == "wait"
    assert "4 of 10 requests" in short.reason and "6 of 8 decided comparisons" in short.reason
    unsure = decide(rollout(), evidence(wins=6, losses=4), NOW)
    assert unsure.action == "wait" and "no significant win yet" in unsure.reason


def test_a_worse_candidate_is_rolled_back_by_the_judge_at_any_time():
    decision = decide(rollout(), evidence(losses=7), NOW)
    assert (decision.action, decision.cause) == ("rollback", "judge")
    assert "significantly worse" in decision.reason


def test_an_undecided_step_ends_as_the_plan_says():
    late = rollout(elapsed_s=601)
    decision = decide(late, evidence(wins=5, losses=5), NOW)
    assert (decision.action, decision.cause) == ("rollback", "undecided")
    assert "undecided after 600 s" in decision.reason
    lenient = rollout(elapsed_s=601, plan=PLAN.model_copy(update={"undecided": "advance"}))
    assert decide(lenient, evidence(wins=5, losses=5), NOW).action == "advance"


def _served(requests: int, errors: int = 0, empty: int = 0, tpot_ms: float = 10) -> dict:
    return {"requests": requests, "errors": errors, "empty": empty, tpot_bucket(tpot_ms): requests}


@pytest.mark.parametrize(
    ("candidate", "cause"),
    [
        (_served(40, errors=4), "errors"),
        (_served(40, empty=8), "empty_answers"),
        (_served(40, tpot_ms=40), "latency"),
    ],
)
def test_guards_roll_back_a_canary_that_serves_worse(candidate, cause):
    counts = {2: candidate, 1: _served(200)}
    decision = decide(rollout(step=1), evidence(wins=8, counts=counts), NOW)
    assert (decision.action, decision.cause) == ("rollback", cause)


def test_guards_wait_for_enough_requests_and_skip_shadow():
    few = {2: _served(5, errors=5), 1: _served(200)}
    assert decide(rollout(step=1), evidence(wins=3, counts=few), NOW).action == "wait"
    # In shadow the candidate serves no user: its counts judge nothing.
    assert (
        decide(
            rollout(step=0),
            evidence(wins=3, counts={2: _served(40, errors=40), 1: _served(40)}),
            NOW,
        ).action
        == "wait"
    )


def test_application_scores_that_drop_roll_back():
    scores = {2: (0.1, 0.2, 0.15, 0.1, 0.2, 0.1), 1: (0.9, 0.8, 0.85, 0.9, 0.95, 0.8)}
    decision = decide(rollout(), evidence(wins=2, scores=scores), NOW)
    assert (decision.action, decision.cause) == ("rollback", "scores")
    assert decision.record()["scores"]["candidate_n"] == 6
    close = {2: (0.8, 0.9, 0.85, 0.9, 0.8), 1: (0.9, 0.8, 0.85, 0.9, 0.85)}
    assert decide(rollout(), evidence(wins=2, scores=close), NOW).action == "wait"


def test_the_watch_rolls_back_on_a_drop_and_completes_at_its_end():
    watching = rollout(step=2)
    assert watching.stage == "watch"
    assert decide(watching, evidence(wins=3, losses=2), NOW).action == "wait"
    assert decide(watching, evidence(losses=8), NOW).cause == "judge"
    over = rollout(step=2, elapsed_s=901)
    assert decide(over, evidence(wins=4, losses=4), NOW).action == "advance"


def test_a_watch_that_ends_without_its_comparisons_does_what_the_plan_says():
    over = rollout(step=2, elapsed_s=901)  # watch.min_comparisons: 8 by default
    quiet = decide(over, evidence(wins=3, losses=2), NOW)
    assert (quiet.action, quiet.cause) == ("rollback", "undecided")
    assert "5 of watch.min_comparisons 8" in quiet.reason
    lenient = rollout(step=2, elapsed_s=901, plan=PLAN.model_copy(update={"undecided": "advance"}))
    assert decide(lenient, evidence(wins=3, losses=2), NOW).action == "advance"
    assert decide(over, evidence(), NOW).action == "rollback"  # users went quiet
