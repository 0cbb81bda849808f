"""The rollout driver on a real registry (SQLite and PostgreSQL) with a real rules judge:
it judges shadow pairs with the candidate in either position, acts on the analysis, and two
drivers on one registry never both drive one rollout."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import update

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollouts.book import PairToJudge, ShadowPair
from loraloop.adapters.schema import Rollout, utcnow
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.judges.interface import Comparison
from loraloop.trainer.rollouts.driver import RolloutDriver, judge_pair

ADAPTER = "acme/support"
PROMPT = StoredPrompt.chat([("user", "tell me about the music")])
POLICY = TrainingPolicy.model_validate(
    {
        "judge": {"kind": "rules", "required": ["^refund"]},
        "rollout": {
            "steps": [
                {"percent": 0, "min_requests": 0, "min_comparisons": 7},
                {"percent": 20, "min_requests": 0, "min_comparisons": 7},
            ],
            "watch": None,
        },
    }
)


class FirstAlways:
    """A judge that always prefers the answer shown first: position bias, nothing else."""

    name, tally = "first", None

    def compare(self, prompt, first, second):
        return Comparison(0, "first")


def test_the_candidate_is_shown_first_and_second_in_turn():
    verdicts = [
        judge_pair(FirstAlways(), PairToJudge(i, PROMPT, "refund a", "a"))[0] for i in range(10)
    ]
    assert verdicts.count("candidate") == verdicts.count("baseline") == 5
    assert judge_pair(FirstAlways(), PairToJudge(1, PROMPT, "same", "same"))[0] == "tie"


def feed(registry, rollout_id: int, step: int, count: int) -> None:
    registry.rollouts.add_pairs(
        ShadowPair(rollout_id, step, 1, PROMPT, f"refund {i}", f"{i}") for i in range(count)
    )


def test_two_drivers_never_both_drive_one_rollout(registry, three_versions, demo_model):
    three_versions.promote(ADAPTER, 1, actor="op")
    three_versions.set_policy(ADAPTER, POLICY, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, POLICY.rollout, actor="op")
    drivers = [
        RolloutDriver(registry, demo_model, worker=f"driver-{i}", lease_s=30) for i in range(2)
    ]
    stop = threading.Event()

    def drive(driver: RolloutDriver) -> None:
        while not stop.is_set():
            driver.drive_once()

    threads = [threading.Thread(target=drive, args=(d,)) for d in drivers]
    for thread in threads:
        thread.start()
    try:
        for step in range(2):  # evidence for each step as it comes
            current = registry.rollouts.current(ADAPTER)
            assert current.step == step
            feed(registry, rollout.id, step, 8)
            deadline = time.monotonic() + 30
            while registry.rollouts.current(ADAPTER).step == step and (
                registry.rollouts.current(ADAPTER).status == "active"
            ):
                assert time.monotonic() < deadline, registry.rollouts.current(ADAPTER)
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    done = registry.rollouts.current(ADAPTER)
    assert done.status == "completed" and registry.adapters.get(ADAPTER).live_version == 2
    events = [e for e in registry.adapters.history(ADAPTER) if e.actor.startswith("rollout:")]
    advances = [e for e in events if e.kind == "rollout_advance"]
    assert [e.detail["step"] for e in advances] == [1, 2]  # each step left exactly once
    assert len({e.actor for e in events}) == 1  # one driver held the lease throughout
    assert [e.kind for e in events].count("promote") == 1


def test_a_lapsed_lease_passes_the_rollout_to_another_driver(registry, three_versions, demo_model):
    three_versions.promote(ADAPTER, 1, actor="op")
    three_versions.set_policy(ADAPTER, POLICY, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, POLICY.rollout, actor="op")
    first, second = (
        RolloutDriver(registry, demo_model, worker=name, lease_s=30) for name in ("first", "second")
    )
    assert first.drive_once() == [] and second.drive_once() == []  # waits: no evidence
    assert registry.rollouts.current(ADAPTER).driver == "first"
    feed(registry, rollout.id, 0, 8)
    assert second.drive_once() == []  # not its rollout while first's lease runs
    with registry.db.transaction(routing_change=False) as session:  # first is killed
        session.execute(update(Rollout).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert second.drive_once() == [f"{ADAPTER}: advance"]
    current = registry.rollouts.current(ADAPTER)
    assert (current.step, current.driver) == (1, "second")
    advance = next(e for e in registry.adapters.history(ADAPTER) if e.kind == "rollout_advance")
    assert advance.actor == "rollout:second" and advance.detail["decision"]["wins"] == 8


def test_a_worse_candidate_is_rolled_back_with_the_evidence(registry, three_versions, demo_model):
    three_versions.promote(ADAPTER, 1, actor="op")
    forbids = POLICY.model_copy(
        update={
            "judge": TrainingPolicy.model_validate(
                {"judge": {"kind": "rules", "forbidden": ["^refund"]}}
            ).judge
        }
    )
    three_versions.set_policy(ADAPTER, forbids, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, forbids.rollout, actor="op")
    feed(registry, rollout.id, 0, 8)
    driver = RolloutDriver(registry, demo_model, worker="d", lease_s=30)
    assert driver.drive_once() == [f"{ADAPTER}: rollback"]
    ended = registry.rollouts.current(ADAPTER)
    assert ended.status == "rolled_back" and ended.decision["cause"] == "judge"
    assert ended.decision["losses"] == 8 and ended.decision["log_lr_worse"] > 2.99
    assert registry.adapters.version(ADAPTER, 2).status == "rejected"


def test_a_driver_acting_on_a_record_read_before_another_moved_the_rollout_changes_nothing(
    registry, three_versions, demo_model, monkeypatch
):
    """Driver a reads the rollouts at step 0 and is held (a slow judge elsewhere); driver b
    takes this rollout, advances it to step 1, and its lease lapses; a then takes it back
    with the record it read before. Its decision, made on step 0's evidence, must not move
    the rollout again: step 1 is left only on step 1's own evidence."""
    three_versions.promote(ADAPTER, 1, actor="op")
    three_versions.set_policy(ADAPTER, POLICY, actor="op")
    rollout = registry.rollouts.start(ADAPTER, 2, POLICY.rollout, actor="op")
    read_by_a = registry.rollouts.unfinished()  # a's pass begins
    feed(registry, rollout.id, 0, 8)
    b = RolloutDriver(registry, demo_model, worker="b", lease_s=30)
    assert b.drive_once() == [f"{ADAPTER}: advance"]
    with registry.db.transaction(routing_change=False) as session:  # b's lease lapses
        session.execute(update(Rollout).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    a = RolloutDriver(registry, demo_model, worker="a", lease_s=30)
    monkeypatch.setattr(registry.rollouts, "unfinished", lambda: read_by_a)
    assert a.drive_once() == []  # refused: the rollout left step 0 since a read it
    current = registry.rollouts.current(ADAPTER)
    assert (current.status, current.step) == ("active", 1)
    assert registry.adapters.get(ADAPTER).live_version == 1  # not promoted on step 0's wins
    advances = [e for e in registry.adapters.history(ADAPTER) if e.kind == "rollout_advance"]
    assert [(e.actor, e.detail["step"]) for e in advances] == [("rollout:b", 1)]
    monkeypatch.undo()
    assert a.drive_once() == []  # read afresh: step 1 has no evidence of its own yet
    feed(registry, rollout.id, 1, 8)
    assert a.drive_once() == [f"{ADAPTER}: advance"]
    assert registry.adapters.get(ADAPTER).live_version == 2
