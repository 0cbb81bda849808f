"""Transfer jobs on a real database (SQLite and PostgreSQL): queued once per version and
target, claimed under a lease that a lapse hands to the next trainer, ended with the version
they made and a history row for every change."""

from __future__ import annotations

import time

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.errors import Conflict, InvalidArgument, NotFound
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.registry import registry_on
from loraloop.adapters.transfers import MAX_ATTEMPTS
from loraloop.adapters.versions import NewVersion, RegistrationPolicy
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import ADAPTER, adapter_files


@pytest.fixture
def transfers(registry, three_versions):
    registry.adapters.promote(ADAPTER, 2, actor="op")
    return registry.transfers


def kinds(registry) -> list[str]:
    return [e.kind for e in registry.adapters.history(ADAPTER) if e.kind.startswith("transfer")]


def test_queueing_twice_gives_the_standing_job(registry, transfers):
    job, created = transfers.queue(ADAPTER, "successor", actor="alice", reason="upgrade")
    assert created and (job.from_version, job.to_base, job.status) == (2, "successor", "queued")
    assert (job.requested_by, job.attempts, job.result_version) == ("alice", 0, None)
    again, created_again = transfers.queue(ADAPTER, "successor", actor="bob")
    assert (again.id, created_again) == (job.id, False)
    other, created_other = transfers.queue(ADAPTER, "successor", actor="bob", version=1)
    assert created_other and other.id != job.id  # another version is another transfer
    assert kinds(registry) == ["transfer_queued", "transfer_queued"]
    event = registry.adapters.history(ADAPTER)[-2]
    assert (event.actor, event.from_version, event.reason) == ("alice", 2, "upgrade")
    assert event.detail == {"job": job.id, "to_base": "successor"}


def test_a_passed_job_stands_and_a_failed_one_is_queued_again(transfers):
    job, _ = transfers.queue(ADAPTER, "successor", actor="op")
    transfers.claim(worker="w", lease_s=60)
    transfers.finish(job.id, "failed", worker="w", reason="refused: no such base")
    retry, created = transfers.queue(ADAPTER, "successor", actor="op")
    assert created and retry.id != job.id
    transfers.claim(worker="w", lease_s=60)
    transfers.finish(retry.id, "passed", worker="w", reason="gate passed")
    assert transfers.queue(ADAPTER, "successor", actor="op") == (
        transfers.job(ADAPTER, retry.id),
        False,
    )


def test_what_cannot_be_queued_is_refused(registry, three_versions):
    with pytest.raises(Conflict, match="no live version on this server's base"):
        registry.transfers.queue(ADAPTER, "successor", actor="op")
    with pytest.raises(NotFound, match="has no version 9"):
        registry.transfers.queue(ADAPTER, "successor", actor="op", version=9)
    registry.adapters.reject(ADAPTER, 3, actor="op")
    with pytest.raises(Conflict, match="Version 3 of 'acme/support' was rejected"):
        registry.transfers.queue(ADAPTER, "successor", actor="op", version=3)
    for name in ("/models/next", "Successor", ""):
        with pytest.raises(InvalidArgument, match="is not a base name"):
            registry.transfers.queue(ADAPTER, name, actor="op", version=1)
    assert registry.transfers.jobs(ADAPTER) == []


def test_a_migration_queues_every_live_version_of_this_base_once(registry, transfers, files):
    registry.adapters.create("acme/idle", actor="op")  # no live version: nothing to carry
    registry.adapters.create("acme/sales", actor="op")
    registry.adapters.register("acme/sales", files[0], NewVersion(), actor="op")
    registry.adapters.promote("acme/sales", 1, actor="op")
    first = registry.transfers.queue_live("successor", actor="op", reason="new base")
    assert [(job.adapter_id, job.from_version, created) for job, created in first] == [
        ("acme/sales", 1, True),
        ("acme/support", 2, True),
    ]
    again = registry.transfers.queue_live("successor", actor="op")
    assert [(job.id, created) for job, created in again] == [(job.id, False) for job, _ in first]
    found = registry.transfers.find(to_base="successor")
    assert [job.adapter_id for job in found] == ["acme/support", "acme/sales"]  # newest first
    assert registry.transfers.find(ids=[first[0][0].id]) == [first[0][0]]
    assert registry.transfers.find(to_base="other") == []


def test_claims_take_the_oldest_job_and_leave_held_ones(registry, transfers):
    first, _ = transfers.queue(ADAPTER, "successor", actor="op")
    second, _ = transfers.queue(ADAPTER, "other", actor="op")
    claim = transfers.claim(worker="a", lease_s=60)
    assert (claim.job_id, claim.adapter_id, claim.from_version, claim.to_base, claim.attempt) == (
        first.id,
        ADAPTER,
        2,
        "successor",
        1,
    )
    assert transfers.claim(worker="b", lease_s=60).job_id == second.id
    assert transfers.claim(worker="c", lease_s=60) is None
    transfers.renew(first.id, worker="a", lease_s=60, progress={"step": 3})
    running = transfers.job(ADAPTER, first.id)
    assert (running.status, running.worker, running.progress) == ("running", "a", {"step": 3})
    with pytest.raises(LeaseLost):
        transfers.renew(first.id, worker="b", lease_s=60, progress={})
    started = [e for e in registry.adapters.history(ADAPTER) if e.kind == "transfer_started"]
    assert [(e.actor, e.detail["attempt"], e.reason) for e in started] == [
        ("trainer:a", 1, None),
        ("trainer:b", 1, None),
    ]


def test_a_lapsed_lease_hands_the_job_to_the_next_trainer(registry, transfers):
    job, _ = transfers.queue(ADAPTER, "successor", actor="op")
    transfers.claim(worker="killed", lease_s=0.2)
    time.sleep(0.3)
    again = transfers.claim(worker="next", lease_s=60)
    assert (again.job_id, again.attempt) == (job.id, 2)
    for stale in (
        lambda: transfers.renew(job.id, worker="killed", lease_s=60, progress={}),
        lambda: transfers.finish(job.id, "passed", worker="killed", reason="late"),
    ):
        with pytest.raises(LeaseLost):
            stale()
    last = registry.adapters.history(ADAPTER)[-1]
    assert (last.kind, last.actor, last.reason) == (
        "transfer_started",
        "trainer:next",
        "the lease of killed lapsed; started again",
    )
    assert transfers.job(ADAPTER, job.id).worker == "next"


def test_a_job_whose_trainers_keep_dying_fails(registry, transfers):
    job, _ = transfers.queue(ADAPTER, "successor", actor="op")
    for attempt in range(MAX_ATTEMPTS):
        assert transfers.claim(worker=f"w{attempt}", lease_s=0.1).attempt == attempt + 1
        time.sleep(0.2)
    assert transfers.claim(worker="last", lease_s=60) is None
    failed = transfers.job(ADAPTER, job.id)
    assert failed.status == "failed" and f"{MAX_ATTEMPTS} times" in failed.reason
    assert kinds(registry)[-1] == "transfer_failed"


@pytest.fixture
def successor(registry, successor_model):
    policy = RegistrationPolicy(
        BaseModelInfo.load(successor_model, aliases=["successor"]), max_rank=64, max_bytes=1 << 30
    )
    return registry_on(registry.db, registry.store, policy)


def test_finish_records_the_version_made_in_the_registration(
    registry, transfers, successor, successor_model, tmp_path
):
    job, _ = transfers.queue(ADAPTER, "successor", actor="op")
    transfers.claim(worker="w", lease_s=60)
    files = adapter_files(build_random_adapter(successor_model, tmp_path / "s", seed=3))
    version, _ = successor.adapters.register(
        ADAPTER,
        files,
        NewVersion(source="transfer", parent_version=2),
        actor="trainer:w",
        within=lambda session, v: transfers.attach(job.id, v.number, worker="w", session=session),
    )
    transfers.finish(
        job.id,
        "passed",
        worker="w",
        reason="gate passed",
        metrics={"transfer_kl": 0.9},
        to_base_fingerprint=successor.adapters.base,
    )
    done = transfers.job(ADAPTER, job.id)
    assert (done.status, done.result_version, done.metrics, done.reason) == (
        "passed",
        version.number,
        {"transfer_kl": 0.9},
        "gate passed",
    )
    assert done.to_base_fingerprint == successor.adapters.base and done.finished_at
    last = registry.adapters.history(ADAPTER)[-1]
    assert (last.kind, last.from_version, last.to_version) == ("transfer_passed", 2, version.number)
    assert last.detail["metrics"] == {"transfer_kl": 0.9}
    with pytest.raises(LeaseLost):  # ended: no longer anyone's
        transfers.finish(job.id, "failed", worker="w", reason="again")


def test_a_registration_by_a_trainer_that_lost_the_job_rolls_back(
    registry, transfers, successor, successor_model, tmp_path
):
    job, _ = transfers.queue(ADAPTER, "successor", actor="op")
    transfers.claim(worker="slow", lease_s=0.2)
    time.sleep(0.3)
    transfers.claim(worker="next", lease_s=60)
    files = adapter_files(build_random_adapter(successor_model, tmp_path / "s", seed=3))
    with pytest.raises(LeaseLost):
        successor.adapters.register(
            ADAPTER,
            files,
            NewVersion(source="transfer"),
            actor="trainer:slow",
            within=lambda session, v: transfers.attach(
                job.id, v.number, worker="slow", session=session
            ),
        )
    assert [v.number for v in registry.adapters.versions(ADAPTER)] == [1, 2, 3]
    assert transfers.job(ADAPTER, job.id).result_version is None
