"""Users' text in shadow comparisons, on real SQLite and PostgreSQL: kept for the judge, then
only where the adapter's policy keeps users' text, and by no one past the retention period;
the verdicts stay evidence either way."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollout_policy import RolloutPolicy, RolloutStep
from loraloop.adapters.rollouts.book import ShadowPair
from loraloop.adapters.schema import ShadowComparison, utcnow
from loraloop.adapters.training_policy import TrainingPolicy

ADAPTER = "acme/support"
PLAN = RolloutPolicy(steps=[RolloutStep(percent=0), RolloutStep(percent=10)])
WEEK_S = 7 * 24 * 3600


def rollout_with_pairs(registry, three_versions, *, keeps: bool, count: int = 3):
    three_versions.promote(ADAPTER, 1, actor="op")
    three_versions.set_policy(ADAPTER, TrainingPolicy(record_completions=keeps), actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, PLAN, actor="op")
    add(registry, rollout.id, 0, count)
    return rollout


def add(registry, rollout_id: int, step: int, count: int) -> None:
    prompt = StoredPrompt.chat([("user", "my account number is 1234")])
    registry.rollouts.add_pairs(
        ShadowPair(rollout_id, step, 1, prompt, f"c{i}", f"b{i}") for i in range(count)
    )


def texts(registry) -> dict[int, tuple]:
    """pair id -> (verdict, whether any text or rationale is still stored)."""
    with registry.db.reading() as session:
        return {
            row.id: (
                row.verdict,
                any(
                    value is not None
                    for value in (
                        row.prompt,
                        row.candidate_answer,
                        row.baseline_answer,
                        row.rationale,
                    )
                ),
            )
            for row in session.scalars(select(ShadowComparison).order_by(ShadowComparison.id))
        }


@pytest.mark.parametrize("keeps", [False, True])
def test_judged_texts_stay_only_where_the_policy_keeps_users_text(registry, three_versions, keeps):
    rollout = rollout_with_pairs(registry, three_versions, keeps=keeps)
    pairs = registry.rollouts.to_judge(rollout, limit=10)
    assert [p.candidate_answer for p in pairs] == ["c0", "c1", "c2"]  # the judge reads them
    registry.rollouts.set_verdicts(
        {pairs[0].id: ("candidate", "c0 is better"), pairs[1].id: ("baseline", "b1 is better")}
    )
    assert texts(registry) == {
        pairs[0].id: ("candidate", keeps),
        pairs[1].id: ("baseline", keeps),
        pairs[2].id: (None, True),
    }
    evidence = registry.rollouts.evidence(rollout)
    assert (evidence.verdicts, evidence.unjudged) == ({"candidate": 1, "baseline": 1}, 1)


def test_no_comparison_keeps_its_texts_past_the_retention_period(registry, three_versions):
    rollout = rollout_with_pairs(registry, three_versions, keeps=True)
    first, *_ = registry.rollouts.to_judge(rollout, limit=10)
    with registry.db.transaction(routing_change=False) as session:
        session.execute(
            update(ShadowComparison)
            .where(ShadowComparison.id == first.id)
            .values(created_at=utcnow() - timedelta(days=8))
        )
    assert registry.rollouts.forget_texts(WEEK_S) == 1
    assert [has for _, has in texts(registry).values()] == [False, True, True]
    assert first.id not in {p.id for p in registry.rollouts.to_judge(rollout, limit=10)}
    assert registry.rollouts.evidence(rollout).unjudged == 3  # the comparison still counts
    assert registry.rollouts.forget_texts(WEEK_S) == 0


def test_without_consent_texts_no_judge_will_read_go(registry, three_versions):
    rollout = rollout_with_pairs(registry, three_versions, keeps=False, count=2)
    assert registry.rollouts.forget_texts(WEEK_S) == 0  # still to be judged
    assert registry.rollouts.acquire(rollout.id, worker="a", lease_s=30)
    registry.rollouts.advance(rollout.id, worker="a", decision={}, reason="better")
    add(registry, rollout.id, 1, 1)
    assert registry.rollouts.forget_texts(WEEK_S) == 2  # step 0 is over: never judged now
    assert [has for _, has in texts(registry).values()] == [False, False, True]
    registry.rollouts.abort(ADAPTER, actor="op")
    assert registry.rollouts.forget_texts(WEEK_S) == 1
    assert not any(has for _, has in texts(registry).values())
