"""One adapter's broken policy or judge fails that adapter's work only: its run fails with
the reason (history too) and it rests, while another tenant's run goes on in the same pass;
a rollout whose judge cannot be built is paused with the reason while another advances.

Real trainer objects on a real registry (the trainer's on SQLite, with real training on the
generated demo model; the rollout driver's on SQLite and PostgreSQL).
"""

from __future__ import annotations

from sqlalchemy import select, update

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database, sqlite_url
from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import registry_on
from loraloop.adapters.rollouts.book import ShadowPair
from loraloop.adapters.schema import Adapter, Tenant
from loraloop.adapters.store import WeightStore
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import NewVersion, RegistrationPolicy
from loraloop.serve.cli.demo import DEMO_POLICY, preference_feedback, user_messages
from loraloop.trainer.loop import TrainerLoop
from loraloop.trainer.rollouts.driver import RolloutDriver

BROKEN_JUDGE = {"kind": "python", "target": "no_such_judge_module:score"}
PROMPT = StoredPrompt.chat([("user", "tell me about the music")])


def preferences(adapter_id: str, count: int) -> list[NewFeedback]:
    return [
        NewFeedback(
            adapter_id,
            1,
            "preference",
            StoredPrompt.chat([("user", line["messages"][0]["content"])]),
            chosen=line["chosen"],
            rejected=line["rejected"],
        )
        for line in preference_feedback(adapter_id, user_messages(count, seed=3))
    ]


def add_adapter(registry, adapter_id: str, versions: list, policy: dict) -> None:
    tenant = adapter_id.split("/")[0]
    if tenant not in {t.name for t in registry.tenants.list()}:
        registry.tenants.create(tenant, actor="t")
    registry.adapters.create(adapter_id, actor="t")
    for directory in versions:
        registry.adapters.register(
            adapter_id, {n: directory / n for n in ADAPTER_FILES}, NewVersion(), actor="t"
        )
    registry.adapters.promote(adapter_id, 1, actor="t")
    registry.adapters.set_policy(adapter_id, TrainingPolicy.model_validate(policy), actor="t")


def store_policy_as_is(db: Database, adapter_id: str, policy: dict) -> None:
    """A policy the registry holds that today's rules refuse (set before they were)."""
    tenant, name = adapter_id.split("/")
    with db.transaction(routing_change=False) as session:
        row_id = session.scalar(
            select(Adapter.id).join(Tenant).where(Tenant.name == tenant, Adapter.name == name)
        )
        session.execute(update(Adapter).where(Adapter.id == row_id).values(policy=policy))


def test_a_broken_judge_or_policy_fails_its_adapter_and_the_next_tenant_trains(
    tmp_path, demo_model, adapter_dirs
):
    db = Database(sqlite_url(tmp_path))
    db.upgrade()
    rules = RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30)
    registry = registry_on(db, WeightStore(tmp_path / "weights"), rules)
    try:
        broken, overflowing, good = "acme/support", "acme/sales", "globex/chat"
        # A queued run that samples with a judge that does not import; feedback enough for
        # a run of its own too.
        add_adapter(
            registry,
            broken,
            [adapter_dirs[broken]],
            {
                **DEMO_POLICY,
                "min_pairs": 8,
                "judge": BROKEN_JUDGE,
                "sampling": {"prompts": ["hello?"]},
            },
        )
        for item in preferences(broken, 8):
            registry.feedback.submit(item)
        registry.training.queue(broken, actor="operator")
        # A wait no date can hold, stored before the rule that refuses it.
        add_adapter(registry, overflowing, [adapter_dirs[overflowing]], DEMO_POLICY)
        store_policy_as_is(db, overflowing, {**DEMO_POLICY, "max_wait_s": 10**14})
        for item in preferences(overflowing, 2):
            registry.feedback.submit(item)
        # Another tenant's good queued run, looked at after both.
        add_adapter(registry, good, [adapter_dirs[good]], {**DEMO_POLICY, "epochs": 1})
        for item in preferences(good, 8):
            registry.feedback.submit(item)
        registry.training.queue(good, actor="operator")

        # A rest (which starts at the poll interval) longer than any run on a busy machine.
        trainer = TrainerLoop(registry, demo_model, worker="w", lease_s=60, poll_s=3600)
        assert trainer.run_once() is True  # the good run, in this very pass
        (trained,) = registry.training.runs(good)
        assert trained.status in ("promoted", "rejected", "candidate"), trained

        (refused,) = registry.training.runs(broken)
        assert refused.status == "failed" and "no_such_judge_module" in refused.reason, refused
        assert refused.reason.startswith("not started: ")
        failed = [e for e in registry.adapters.history(broken) if e.kind == "training_failed"]
        assert [(e.reason, e.detail["run"]) for e in failed] == [(refused.reason, refused.id)]
        assert registry.feedback.stats(broken).by_status == {"pending": 8}
        assert registry.training.runs(overflowing) == []
        assert registry.feedback.stats(overflowing).by_status == {"pending": 2}

        # Resting: the broken adapter's feedback is due (8 pairs), yet no run starts now.
        assert trainer.run_once() is False
        assert len(registry.training.runs(broken)) == 1
        assert registry.training.runs(overflowing) == []
    finally:
        db.dispose()


def test_a_rollout_whose_judge_cannot_be_built_is_paused_and_another_advances(
    registry, files, demo_model
):
    plan = {
        "steps": [
            {"percent": 0, "min_requests": 0, "min_comparisons": 7},
            {"percent": 20, "min_requests": 0, "min_comparisons": 7},
        ],
        "watch": None,
    }
    broken, good = "acme/support", "globex/chat"
    rollouts = {}
    for adapter_id, judge in (
        (broken, BROKEN_JUDGE),
        (good, {"kind": "rules", "required": ["^refund"]}),
    ):
        registry.tenants.create(adapter_id.split("/")[0], actor="t")
        registry.adapters.create(adapter_id, actor="t")
        for version_files in files[:2]:
            registry.adapters.register(adapter_id, version_files, NewVersion(), actor="t")
        registry.adapters.promote(adapter_id, 1, actor="t")
        policy = TrainingPolicy.model_validate({"judge": judge, "rollout": plan})
        registry.adapters.set_policy(adapter_id, policy, actor="t")
        rollout = registry.rollouts.start(adapter_id, 2, policy.rollout, actor="op")
        registry.rollouts.add_pairs(
            ShadowPair(rollout.id, 0, 1, PROMPT, f"refund {i}", f"{i}") for i in range(8)
        )
        rollouts[adapter_id] = rollout

    driver = RolloutDriver(registry, demo_model, worker="d", lease_s=30)
    assert driver.drive_once() == [f"{good}: advance"]
    assert registry.rollouts.current(good).step == 1

    paused = registry.rollouts.current(broken)
    assert (paused.status, paused.step, paused.driver) == ("paused", 0, None)
    assert "no_such_judge_module" in paused.reason, paused
    (event,) = [e for e in registry.adapters.history(broken) if e.kind == "rollout_paused"]
    assert event.reason == paused.reason and event.actor == "rollout:d"
    assert driver.drive_once() == []  # paused: not driven again until an operator resumes
