"""Rollouts in the registry, on real SQLite and PostgreSQL: steps move the pointers, the lease
lets one driver act, an operator's change always wins, every decision leaves its figures."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from loraloop.adapters.errors import Conflict
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollout_policy import RolloutPolicy, RolloutStep
from loraloop.adapters.rollouts.book import ShadowPair
from loraloop.adapters.schema import LivePointer, Rollout, utcnow
from loraloop.adapters.serving_view import read_serving_view

ADAPTER = "acme/support"
PLAN = RolloutPolicy(
    steps=[RolloutStep(percent=0), RolloutStep(percent=10), RolloutStep(percent=50)]
)


@pytest.fixture
def rolling(registry, three_versions):
    """Version 1 live, version 2 in a rollout at shadow, driven by worker "a"."""
    three_versions.promote(ADAPTER, 1, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, PLAN, actor="op", reason="try 2")
    assert registry.rollouts.acquire(rollout.id, worker="a", lease_s=30)
    return rollout


def _pointers(registry):
    adapter = registry.adapters.get(ADAPTER)
    return adapter.live_version, adapter.canary_version, adapter.canary_percent


def test_steps_move_the_pointers_then_the_watch_completes(registry, rolling):
    rollouts = registry.rollouts
    assert _pointers(registry) == (1, None, None)  # shadow: users see only version 1
    seen = [rolling.stage]
    for expected in [(1, 2, 10), (1, 2, 50), (2, None, None)]:
        record = rollouts.advance(
            rolling.id, worker="a", decision={"action": "advance"}, reason="better"
        )
        assert _pointers(registry) == expected
        seen.append(record.stage)
    assert seen == ["shadow", "canary 10%", "canary 50%", "watch"]
    assert registry.adapters.version(ADAPTER, 2).status == "live"
    done = rollouts.advance(
        rolling.id, worker="a", decision={"action": "advance"}, reason="watch over"
    )
    assert done.status == "completed" and done.finished_at is not None
    kinds = [(e.kind, e.actor) for e in registry.adapters.history(ADAPTER)]
    driver = "rollout:a"
    assert kinds[-7:] == [
        ("rollout_started", "op"),
        ("rollout_advance", driver),
        ("rollout_advance", driver),
        ("rollout_advance", driver),
        ("canary_cleared", driver),
        ("promote", driver),
        ("rollout_completed", driver),
    ]
    advance = registry.adapters.history(ADAPTER)[-4]
    assert advance.detail["decision"] == {"action": "advance"} and advance.reason == "better"


def test_a_rollback_at_a_canary_step_rejects_the_candidate(registry, rolling):
    registry.rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    assert _pointers(registry) == (1, 2, 10)
    record = registry.rollouts.roll_back(
        rolling.id, worker="a", decision={"action": "rollback", "cause": "judge"}, reason="worse"
    )
    assert record.status == "rolled_back" and record.decision["cause"] == "judge"
    assert _pointers(registry) == (1, None, None)
    assert registry.adapters.version(ADAPTER, 2).status == "rejected"
    event = next(e for e in registry.adapters.history(ADAPTER) if e.kind == "rollout_rollback")
    assert (event.from_version, event.to_version, event.reason) == (2, 1, "worse")
    assert event.detail["decision"]["cause"] == "judge"


def test_a_rollback_in_the_watch_makes_the_previous_version_live(registry, rolling):
    for _ in range(3):
        registry.rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    assert _pointers(registry) == (2, None, None)
    registry.rollouts.roll_back(rolling.id, worker="a", decision={}, reason="dropped")
    assert _pointers(registry) == (1, None, None)
    statuses = {v.number: v.status for v in registry.adapters.versions(ADAPTER)}
    assert statuses == {1: "live", 2: "rejected", 3: "candidate"}


def test_one_driver_at_a_time_and_a_lapsed_lease_passes_on(registry, rolling):
    rollouts = registry.rollouts
    assert not rollouts.acquire(rolling.id, worker="b", lease_s=30)
    with pytest.raises(LeaseLost):
        rollouts.advance(rolling.id, worker="b", decision={}, reason="not mine")
    with registry.db.transaction(routing_change=False) as session:
        session.execute(update(Rollout).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert rollouts.acquire(rolling.id, worker="b", lease_s=30)
    with pytest.raises(LeaseLost):
        rollouts.note_decision(rolling.id, worker="a", decision={"action": "wait"})
    assert _pointers(registry) == (1, None, None)


def test_concurrent_drivers_acquire_exactly_once(registry, three_versions):
    three_versions.promote(ADAPTER, 1, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, PLAN, actor="op")
    won, barrier = [], threading.Barrier(8)

    def race(worker: str) -> None:
        barrier.wait()
        if registry.rollouts.acquire(rollout.id, worker=worker, lease_s=30):
            won.append(worker)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


@pytest.mark.parametrize("change", ["promote", "rollback_to", "canary", "reject"])
def test_an_operator_change_ends_the_rollout_and_wins(registry, rolling, change):
    adapters, rollouts = registry.adapters, registry.rollouts
    rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    if change == "promote":
        adapters.promote(ADAPTER, 3, actor="op", reason="hotfix")
    elif change == "rollback_to":
        adapters.promote(ADAPTER, 1, actor="op")  # already live: changes nothing
        assert rollouts.current(ADAPTER).status == "active"
        adapters.rollback(ADAPTER, actor="op", to_version=3, reason="hotfix")
    elif change == "canary":
        adapters.set_canary(ADAPTER, 3, 20, actor="op", reason="hotfix")
    else:
        adapters.reject(ADAPTER, 2, actor="op", reason="hotfix")
    ended = rollouts.current(ADAPTER)
    assert ended.status == "superseded" and "by op: hotfix" in ended.reason
    with pytest.raises(LeaseLost):  # the driver's next step finds it over
        rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    promotes = [e for e in adapters.history(ADAPTER) if e.kind == "promote"]
    assert all(e.actor == "op" for e in promotes)
    assert adapters.get(ADAPTER).canary_version in (None, 3)


def test_the_final_advance_is_compare_and_swap_on_the_live_version(registry, rolling):
    rollouts = registry.rollouts
    for _ in range(2):
        rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    # Version 3 made live behind the registry's back (as an older server might): the final
    # advance must not promote over it.
    with registry.db.transaction() as session:
        session.execute(update(LivePointer).values(live_version=3))
    with pytest.raises(LeaseLost, match="no longer 1"):
        rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    assert registry.adapters.get(ADAPTER).live_version == 3


def test_pause_resume_abort(registry, rolling):
    rollouts = registry.rollouts
    rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    paused = rollouts.pause(ADAPTER, actor="op", reason="look first")
    assert paused.status == "paused" and paused.driver is None
    assert not rollouts.acquire(rolling.id, worker="a", lease_s=30)  # no driver while paused
    with pytest.raises(Conflict, match="paused; only a active"):
        rollouts.pause(ADAPTER, actor="op")
    resumed = rollouts.resume(ADAPTER, actor="op")
    assert resumed.status == "active" and resumed.step_started_at > paused.step_started_at
    aborted = rollouts.abort(ADAPTER, actor="op", reason="not now")
    assert aborted.status == "aborted" and _pointers(registry) == (1, None, None)
    assert registry.adapters.version(ADAPTER, 2).status == "candidate"  # not judged bad
    with pytest.raises(Conflict, match="no rollout under way"):
        rollouts.abort(ADAPTER, actor="op")
    kinds = [e.kind for e in registry.adapters.history(ADAPTER)][-4:]
    assert kinds == ["rollout_paused", "rollout_resumed", "canary_cleared", "rollout_aborted"]


def test_a_new_rollout_supersedes_the_one_under_way(registry, rolling):
    registry.rollouts.advance(rolling.id, worker="a", decision={}, reason="better")
    second = registry.rollouts.start(ADAPTER, 3, PLAN, actor="trainer:t")
    assert second.candidate == 3 and _pointers(registry) == (1, None, None)
    assert [r.candidate for r in registry.rollouts.unfinished()] == [3]


def test_start_refuses_what_cannot_roll_out(registry, three_versions):
    with pytest.raises(Conflict, match="no live version"):
        registry.rollouts.start(ADAPTER, 2, PLAN, actor="op")
    three_versions.promote(ADAPTER, 1, actor="op")
    with pytest.raises(Conflict, match="is live"):
        registry.rollouts.start(ADAPTER, 1, PLAN, actor="op")
    three_versions.reject(ADAPTER, 3, actor="op")
    with pytest.raises(Conflict, match="is rejected"):
        registry.rollouts.start(ADAPTER, 3, PLAN, actor="op")


def test_a_first_canary_step_sets_the_canary_at_once(registry, three_versions):
    three_versions.promote(ADAPTER, 1, actor="op")
    plan = RolloutPolicy(steps=[RolloutStep(percent=5)], watch=None)
    rollout = registry.rollouts.start(ADAPTER, 2, plan, actor="op")
    assert _pointers(registry) == (1, 2, 5)
    registry.rollouts.acquire(rollout.id, worker="a", lease_s=30)
    done = registry.rollouts.advance(rollout.id, worker="a", decision={}, reason="better")
    assert done.status == "completed" and _pointers(registry) == (2, None, None)


def test_the_policy_plans_rollouts_of_new_versions(registry, three_versions):
    from loraloop.adapters.training_policy import TrainingPolicy

    assert registry.rollouts.start_planned(ADAPTER, 2, actor="op") is None  # no plan
    three_versions.promote(ADAPTER, 1, actor="op")
    policy = TrainingPolicy.model_validate(
        {"judge": {"kind": "rules", "max_tokens": 8}, "rollout": {"shadow_percent": 50}}
    )
    three_versions.set_policy(ADAPTER, policy, actor="op")
    started = registry.rollouts.start_planned(ADAPTER, 2, actor="op", reason="uploaded")
    assert started.plan.shadow_percent == 50 and started.candidate == 2


def test_servers_see_the_step_and_the_evidence_adds_up(registry, rolling):
    rollouts = registry.rollouts
    view = read_serving_view(registry.db, registry.adapters.base)
    assert [(r.adapter_id, r.stage) for r in view.rollouts] == [(ADAPTER, "shadow")]
    prompt = StoredPrompt.from_json({"messages": [{"role": "user", "content": "hi"}]})
    rollouts.add_pairs([ShadowPair(rolling.id, 0, 1, prompt, f"c{i}", f"b{i}") for i in range(3)])
    rollouts.add_counts({(rolling.id, 0, 1, "requests"): 4})
    rollouts.add_counts({(rolling.id, 0, 1, "requests"): 5, (rolling.id, 0, 1, "errors"): 1})
    pairs = rollouts.to_judge(rolling, limit=10)
    assert [p.candidate_answer for p in pairs] == ["c0", "c1", "c2"]
    rollouts.set_verdicts({pairs[0].id: ("candidate", "r"), pairs[1].id: ("baseline", "r")})
    evidence = rollouts.evidence(rolling)
    assert evidence.verdicts == {"candidate": 1, "baseline": 1} and evidence.unjudged == 1
    assert evidence.counts == {1: {"requests": 9, "errors": 1}}
    rollouts.note_decision(rolling.id, worker="a", decision={"action": "wait", "wins": 1})
    assert rollouts.current(ADAPTER).decision == {"action": "wait", "wins": 1}
