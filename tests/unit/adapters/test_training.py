"""Training bookkeeping on real SQLite and PostgreSQL: claims, leases, consumption."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database
from loraloop.adapters.feedback import FeedbackBook, NewFeedback
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.schema import utcnow
from loraloop.adapters.store import WeightStore
from loraloop.adapters.tenants import TenantBook
from loraloop.adapters.training import LEASE_LOST, TrainingBook
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import AdapterBook, RegistrationPolicy

ADAPTER = "acme/support"
PROMPT = StoredPrompt.chat([("user", "hi")])


@pytest.fixture
def books(database, tmp_path, demo_model):
    db = Database(database)
    db.upgrade()
    TenantBook(db).create("acme", actor="t")
    policy = RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30)
    AdapterBook(db, WeightStore(tmp_path / "w"), policy).create(ADAPTER, actor="t")
    feedback = FeedbackBook(db)
    for i in range(6):
        feedback.submit(
            NewFeedback(ADAPTER, None, "preference", PROMPT, chosen=f"a{i}", rejected=f"b{i}")
        )
    yield TrainingBook(db, policy.base.fingerprint), feedback
    db.dispose()


def test_two_trainers_never_claim_the_same_feedback(books):
    training, _ = books
    first = training.claim(ADAPTER, worker="a", lease_s=60)
    second = training.claim(ADAPTER, worker="b", lease_s=60)
    assert len(first.feedback) == 6 and second.feedback == ()
    assert [w.pending for w in training.pending_work()] == []


def test_an_expired_lease_hands_the_feedback_to_the_next_run(books):
    training, _ = books
    lost = training.claim(ADAPTER, worker="a", lease_s=0.2)
    time.sleep(0.3)
    (work,) = training.pending_work()
    assert work.pending == 6
    taken = training.claim(ADAPTER, worker="b", lease_s=60)
    assert len(taken.feedback) == 6
    assert training.run(ADAPTER, lost.run_id).reason == LEASE_LOST
    with pytest.raises(LeaseLost):
        training.renew(lost.run_id, worker="a", lease_s=60, progress={})


def test_consumed_only_with_the_registration_and_released_on_failure(books):
    training, feedback = books
    claim = training.claim(ADAPTER, worker="a", lease_s=60)
    training.renew(claim.run_id, worker="a", lease_s=60, progress={"step": 3})
    assert training.run(ADAPTER, claim.run_id).progress == {"step": 3}
    with training.db.transaction(routing_change=False) as session:
        training.consume(claim.run_id, 2, worker="a", pairs=6, session=session)
    assert feedback.stats(ADAPTER).by_status == {"consumed": 6}

    for i in range(2):
        feedback.submit(
            NewFeedback(ADAPTER, None, "preference", PROMPT, chosen=f"c{i}", rejected=f"d{i}")
        )
    failed = training.claim(ADAPTER, worker="a", lease_s=60)
    training.finish(failed.run_id, "failed", reason="boom", release=True)
    assert feedback.stats(ADAPTER).by_status == {"consumed": 6, "pending": 2}
    assert training.run(ADAPTER, failed.run_id).status == "failed"


def test_a_queued_run_is_pending_work_without_feedback(books):
    training, _ = books
    training.claim(ADAPTER, worker="a", lease_s=60)
    queued = training.queue(ADAPTER, actor="admin")
    (work,) = training.pending_work()
    assert work.queued and work.pending == 0
    assert training.claim(ADAPTER, worker="b", lease_s=60).run_id == queued.id


def test_a_policy_that_samples_on_a_schedule_queues_its_own_runs(books, tmp_path, demo_model):
    training, _ = books
    adapters = AdapterBook(
        training.db,
        WeightStore(tmp_path / "w"),
        RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30),
    )
    sampling = {
        "judge": {"kind": "rules", "max_tokens": 8},
        "sampling": {"prompts": ["hi"], "every_s": 3600},
    }
    adapters.set_policy(ADAPTER, TrainingPolicy.model_validate(sampling), actor="t")
    assert training.queue_scheduled(actor="trainer:a") == [ADAPTER]  # it never ran
    (queued,) = training.runs(ADAPTER)
    assert (queued.status, queued.requested_by) == ("queued", "trainer:a")
    assert training.queue_scheduled(actor="trainer:a") == []  # one is waiting already

    training.refuse_queued(ADAPTER, reason="no server")
    later = utcnow() + timedelta(seconds=3599)
    assert training.queue_scheduled(actor="trainer:a", now=later) == []
    assert training.queue_scheduled(actor="trainer:a", now=later + timedelta(seconds=2)) == [
        ADAPTER
    ]
    reasons = [e.reason for e in adapters.history(ADAPTER) if e.kind == "training_queued"]
    assert reasons == ["the policy samples every 3600 s"] * 2

    adapters.set_policy(
        ADAPTER, TrainingPolicy.model_validate({**sampling, "enabled": False}), actor="t"
    )
    training.refuse_queued(ADAPTER, reason="no server")
    assert training.queue_scheduled(actor="trainer:a", now=later + timedelta(days=1)) == []
