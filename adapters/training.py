"""Training-run bookkeeping: queued and running runs, and the feedback they claim under a lease.

A run claims pending feedback by stamping it with its id and a lease expiry; it keeps the
lease alive while it trains. A trainer killed mid-run stops renewing: once the lease expires
the run is marked failed and its feedback is claimable again, so nothing is lost and no two
runs train on the same rows. Feedback becomes `consumed` only inside the transaction that
registers the version trained on it (see `consume`), or `unpaired` when the trainer's policy
says it will never make a training pair (see `mark_unpaired` and `set_aside`): neither is
claimable again.

A run ends `promoted`, `rejected`, `candidate` (passed, not promoted), `identical` (its weights
were byte for byte an existing version's, which is left as it is), `unchanged` (training
changed nothing the gate could see; its version is rejected) or `failed`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from .db import Database, rows_changed
from .errors import NotFound
from .leased_jobs import (
    TRAINING_RUNS,
    lease_until,
    release_lease,
    renew_lease,
    still_held,
    take_lease,
)
from .pointers import live_version
from .prompts import StoredPrompt
from .schema import Adapter, Event, Feedback, Tenant, TrainingRun, adapter_row, utc, utcnow
from .training_policy import TrainingPolicy

LEASE_LOST = "the trainer stopped renewing its lease (killed or stuck); the feedback went back"
IDS_PER_STATEMENT = 500  # well under SQLite's limit on bound parameters


@dataclass(frozen=True)
class RunRecord:
    id: int
    adapter_id: str
    status: str
    requested_by: str | None
    worker: str | None
    parent_version: int | None
    candidate_version: int | None
    pairs: int | None
    progress: dict
    metrics: dict
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: TrainingRun, adapter_id: str) -> RunRecord:
        def maybe_utc(moment: datetime | None) -> datetime | None:
            return utc(moment) if moment else None

        return cls(
            row.id,
            adapter_id,
            row.status,
            row.requested_by,
            row.worker,
            row.parent_version,
            row.candidate_version,
            row.pairs,
            dict(row.progress),
            dict(row.metrics),
            row.reason,
            utc(row.created_at),
            maybe_utc(row.started_at),
            maybe_utc(row.finished_at),
        )


@dataclass(frozen=True)
class PendingWork:
    adapter_id: str
    stored_policy: dict | None  # as stored; see `policy`
    pending: int
    oldest: datetime | None
    queued: bool  # an operator asked for a run

    @cached_property
    def policy(self) -> TrainingPolicy:
        """Read when the trainer looks at this adapter: a stored policy that breaks a rule
        made since it was set raises for this adapter's work only."""
        return TrainingPolicy.stored(self.stored_policy)


@dataclass(frozen=True)
class ClaimedFeedback:
    id: int
    kind: str
    prompt: StoredPrompt
    chosen: str | None
    rejected: str | None
    completion: str | None
    score: float | None
    created_at: datetime

    @classmethod
    def of(cls, row: Feedback) -> ClaimedFeedback:
        return cls(
            row.id,
            row.kind,
            StoredPrompt.from_json(row.prompt),
            row.chosen,
            row.rejected,
            row.completion,
            row.score,
            utc(row.created_at),
        )


@dataclass(frozen=True)
class Claim:
    run_id: int
    adapter_id: str
    parent_version: int | None  # the live version when the run started: what it trains from
    feedback: tuple[ClaimedFeedback, ...]


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        Feedback.status == "pending",
        and_(Feedback.status == "claimed", Feedback.lease_expires_at < now),
    )


def _chunks(ids: Collection[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), IDS_PER_STATEMENT):
        yield ordered[start : start + IDS_PER_STATEMENT]


class TrainingBook:
    """Training runs of one base model's trainers: a run trains from the live version on
    that base."""

    def __init__(self, db: Database, base: str) -> None:
        self.db, self.base = db, base

    def queue(self, adapter_id: str, *, actor: str, reason: str | None = None) -> RunRecord:
        """An operator's request for a run now; the history records who asked and why."""
        with self.db.transaction(routing_change=False) as session:
            adapter = adapter_row(adapter_id, session=session)
            return RunRecord.of(_queue_run(adapter, actor, reason, session=session), adapter_id)

    def queue_scheduled(self, *, actor: str, now: datetime | None = None) -> list[str]:
        """Queue a run for every adapter whose policy samples on a schedule (sampling.every_s)
        and whose last run began that long ago, or never ran; the adapters queued. An adapter
        with a run queued or running waits for it."""
        now = now or utcnow()
        queued = []
        with self.db.transaction(routing_change=False) as session:
            adapters = session.execute(
                select(Adapter, Tenant.name)
                .join(Tenant)
                .where(Adapter.policy.is_not(None))
                .order_by(Adapter.id)
                .with_for_update(of=Adapter)
            ).all()
            for adapter, tenant in adapters:
                try:
                    policy = TrainingPolicy.stored(adapter.policy)
                except ValidationError:  # the trainer fails its runs with the reason
                    continue
                every_s = policy.sampling.every_s if policy.sampling else None
                if not (policy.enabled and every_s):
                    continue
                last = session.scalar(
                    select(TrainingRun)
                    .where(TrainingRun.adapter_id == adapter.id)
                    .order_by(TrainingRun.id.desc())
                    .limit(1)
                )
                if last is not None and (
                    last.status in ("queued", "running")
                    or utc(last.started_at or last.created_at) > now - timedelta(seconds=every_s)
                ):
                    continue
                _queue_run(adapter, actor, f"the policy samples every {every_s} s", session=session)
                queued.append(f"{tenant}/{adapter.name}")
        return queued

    def runs(self, adapter_id: str, *, limit: int = 50) -> list[RunRecord]:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(TrainingRun)
                .where(TrainingRun.adapter_id == adapter.id)
                .order_by(TrainingRun.id.desc())
                .limit(limit)
            )
            return [RunRecord.of(row, adapter_id) for row in rows]

    def run(self, adapter_id: str, run_id: int) -> RunRecord:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            row = session.get(TrainingRun, run_id)
            if row is None or row.adapter_id != adapter.id:
                raise NotFound(f"'{adapter_id}' has no training run {run_id}.")
            return RunRecord.of(row, adapter_id)

    def pending_work(self) -> list[PendingWork]:
        """Per adapter with claimable feedback or a queued run: what the trainer decides on."""
        now = utcnow()
        with self.db.reading() as session:
            counts = dict(
                (a, (n, oldest))
                for a, n, oldest in session.execute(
                    select(Feedback.adapter_id, func.count(), func.min(Feedback.created_at))
                    .where(_claimable(now))
                    .group_by(Feedback.adapter_id)
                )
            )
            queued = set(
                session.scalars(
                    select(TrainingRun.adapter_id).where(TrainingRun.status == "queued")
                )
            )
            adapters = session.execute(
                select(Adapter.id, Tenant.name, Adapter.name, Adapter.policy)
                .join(Tenant)
                .where(Adapter.id.in_(set(counts) | queued))
                .order_by(Adapter.id)
            ).all()
        work = []
        for row_id, tenant, name, policy in adapters:
            pending, oldest = counts.get(row_id, (0, None))
            work.append(
                PendingWork(
                    f"{tenant}/{name}",
                    policy,
                    pending,
                    utc(oldest) if oldest else None,
                    row_id in queued,
                )
            )
        return work

    def claim(self, adapter_id: str, *, worker: str, lease_s: float) -> Claim:
        now = utcnow()
        lease = lease_until(lease_s, now)
        with self.db.transaction(routing_change=False) as session:
            adapter = adapter_row(adapter_id, session=session)
            self._fail_abandoned(adapter.id, now, session=session)
            run = session.scalar(
                select(TrainingRun)
                .where(TrainingRun.adapter_id == adapter.id, TrainingRun.status == "queued")
                .order_by(TrainingRun.id)
                .limit(1)
            ) or TrainingRun(adapter_id=adapter.id)
            take_lease(run, TRAINING_RUNS, worker, lease)
            live = live_version(adapter, self.base, session=session)
            run.started_at, run.parent_version = now, live
            session.add(run)
            session.flush()
            # SKIP LOCKED: on PostgreSQL a second trainer passes over rows being claimed now.
            rows = session.scalars(
                select(Feedback)
                .where(Feedback.adapter_id == adapter.id, _claimable(now))
                .order_by(Feedback.id)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.status, row.run_id, row.lease_expires_at = "claimed", run.id, lease
            claimed = tuple(ClaimedFeedback.of(row) for row in rows)
            return Claim(run.id, adapter_id, live, claimed)

    def claimable(self, adapter_id: str) -> tuple[ClaimedFeedback, ...]:
        """The rows a run would claim now, by id: what the trainer decides on before one."""
        now = utcnow()
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(Feedback)
                .where(Feedback.adapter_id == adapter.id, _claimable(now))
                .order_by(Feedback.id)
            )
            return tuple(ClaimedFeedback.of(row) for row in rows)

    def consumed(self, adapter_id: str, *, limit: int) -> tuple[ClaimedFeedback, ...]:
        """The newest `limit` rows earlier runs trained on (consumed), newest first: what a
        run replays so that it adds to what those runs taught."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(Feedback)
                .where(Feedback.adapter_id == adapter.id, Feedback.status == "consumed")
                .order_by(Feedback.id.desc())
                .limit(limit)
            )
            return tuple(ClaimedFeedback.of(row) for row in rows)

    def mark_unpaired(self, adapter_id: str, ids: Collection[int]) -> int:
        """Rows that will never make a pair leave the queue for good. Only rows still
        claimable change (a run that claimed one meanwhile keeps it); returns how many did."""
        now = utcnow()
        changed = 0
        with self.db.transaction(routing_change=False) as session:
            adapter = adapter_row(adapter_id, session=session)
            for chunk in _chunks(ids):
                changed += rows_changed(
                    session,
                    update(Feedback)
                    .where(
                        Feedback.adapter_id == adapter.id,
                        Feedback.id.in_(chunk),
                        _claimable(now),
                    )
                    .values(status="unpaired", run_id=None, lease_expires_at=None),
                )
        return changed

    def set_aside(
        self, run_id: int, *, worker: str, unpaired: Collection[int], waiting: Collection[int]
    ) -> None:
        """A run drops the claimed rows it cannot train on: `unpaired` ones for good (they
        keep the run's id, which decided it), `waiting` ones back to pending."""
        with self.db.transaction(routing_change=False) as session:
            still_held(TRAINING_RUNS, run_id, worker, session=session)
            for status, ids in (("unpaired", unpaired), ("pending", waiting)):
                keep_run = run_id if status == "unpaired" else None
                for chunk in _chunks(ids):
                    session.execute(
                        update(Feedback)
                        .where(
                            Feedback.run_id == run_id,
                            Feedback.status == "claimed",
                            Feedback.id.in_(chunk),
                        )
                        .values(status=status, run_id=keep_run, lease_expires_at=None)
                    )

    def refuse_queued(
        self, adapter_id: str, *, reason: str, actor: str = "trainer"
    ) -> RunRecord | None:
        """The oldest queued run ends failed without claiming anything: the trainer knows
        it could not train. None: no run was queued."""
        with self.db.transaction(routing_change=False) as session:
            adapter = adapter_row(adapter_id, session=session)
            run = session.scalar(
                select(TrainingRun)
                .where(TrainingRun.adapter_id == adapter.id, TrainingRun.status == "queued")
                .order_by(TrainingRun.id)
                .limit(1)
            )
            if run is None:
                return None
            run.status, run.reason, run.finished_at = "failed", reason, utcnow()
            _log_failure(run, adapter.tenant_id, actor, session=session)
            return RunRecord.of(run, adapter_id)

    def _fail_abandoned(self, adapter_id: int, now: datetime, *, session: Session) -> None:
        session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.adapter_id == adapter_id,
                TRAINING_RUNS.lapsed(now),
            )
            .values(status="failed", reason=LEASE_LOST, finished_at=now)
        )

    def renew(self, run_id: int, *, worker: str, lease_s: float, progress: dict) -> None:
        lease = lease_until(lease_s)
        with self.db.transaction(routing_change=False) as session:
            renew_lease(TRAINING_RUNS, run_id, worker, lease, session=session).progress = progress
            session.execute(
                update(Feedback)
                .where(Feedback.run_id == run_id, Feedback.status == "claimed")
                .values(lease_expires_at=lease)
            )

    def consume(
        self, run_id: int, version: int, *, worker: str, pairs: int, session: Session
    ) -> None:
        """Inside the registration's transaction: the claimed feedback becomes consumed by
        `version`. A lost lease raises, and the registration rolls back with it."""
        run = still_held(TRAINING_RUNS, run_id, worker, session=session)
        run.candidate_version, run.pairs = version, pairs
        session.execute(
            update(Feedback)
            .where(Feedback.run_id == run_id, Feedback.status == "claimed")
            .values(status="consumed", consumed_by_version=version)
        )

    def finish(
        self,
        run_id: int,
        status: str,
        *,
        reason: str | None = None,
        metrics: dict | None = None,
        release: bool = False,
    ) -> None:
        """End a run. `release`: its claimed feedback goes back to pending (nothing trained)."""
        with self.db.transaction(routing_change=False) as session:
            run = session.get_one(TrainingRun, run_id)
            run.status, run.reason, run.finished_at = status, reason, utcnow()
            run.metrics = metrics or run.metrics
            release_lease(run, TRAINING_RUNS)
            if status == "failed":
                tenant_id = session.get_one(Adapter, run.adapter_id).tenant_id
                _log_failure(run, tenant_id, f"trainer:{run.worker}", session=session)
            if release:
                session.execute(
                    update(Feedback)
                    .where(Feedback.run_id == run_id, Feedback.status == "claimed")
                    .values(status="pending", run_id=None, lease_expires_at=None)
                )


def _queue_run(
    adapter: Adapter, actor: str, reason: str | None, *, session: Session
) -> TrainingRun:
    """A queued run, and the history event that says who asked for it and why."""
    run = TrainingRun(adapter_id=adapter.id, status="queued", requested_by=actor)
    session.add(run)
    session.flush()
    session.add(
        Event(
            kind="training_queued",
            actor=actor,
            tenant_id=adapter.tenant_id,
            adapter_id=adapter.id,
            reason=reason,
            detail={"run": run.id},
        )
    )
    return run


def _log_failure(run: TrainingRun, tenant_id: int, actor: str, *, session: Session) -> None:
    """A failed run's history event: the adapter's history says why it did not train."""
    session.add(
        Event(
            kind="training_failed",
            actor=actor,
            tenant_id=tenant_id,
            adapter_id=run.adapter_id,
            reason=run.reason,
            detail={"run": run.id},
        )
    )
