"""Transfer jobs: an adapter version carried to another base model by distillation.

An operator (or `loraloop base migrate`) queues a job naming the version and the target base
by a name the trainers know (their `transfer_targets`: name -> model directory); clients never
send paths. A trainer that knows targets claims the oldest job under a lease and renews it
while it distills; a job whose lease lapses (a killed trainer) is claimed again, by any
trainer, up to MAX_ATTEMPTS times. The trainer registers the student for the target base with
`attach` inside the registration's transaction, so a trainer that lost its lease registers
nothing. A job ends passed (a version for the new base, made live if the policy says so),
rejected (the version failed the transfer gate and was rejected, for an operator to inspect)
or failed (no version: an unknown target, other tokenizers, too few prompts, an error).

Queueing is idempotent: a queued, running or passed job for the same version and target is
returned instead of a new one; a rejected or failed one is queued again. Every change of a
job's state is one transaction with its history row (transfer_queued, transfer_started,
transfer_passed, transfer_rejected, transfer_failed).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from .db import Database
from .errors import Conflict, InvalidArgument, NotFound
from .history import log_event
from .leased_jobs import (
    TRANSFER_JOBS,
    lease_until,
    release_lease,
    renew_lease,
    still_held,
    take_lease,
)
from .names import BASE_NAME_HELP, is_valid_base_name
from .pointers import live_version
from .schema import (
    Adapter,
    EventKind,
    LivePointer,
    Tenant,
    TransferJob,
    TransferStatus,
    adapter_row,
    adapter_row_id_to_name,
    utc,
    utcnow,
    version_row,
)

ENDED: tuple[TransferStatus, ...] = ("passed", "rejected", "failed")
# A job in one of these is returned when the same transfer is queued again.
STANDING: tuple[TransferStatus, ...] = ("queued", "running", "passed")
# A job whose trainer stopped renewing this many times (killed, out of memory) fails instead
# of being claimed once more.
MAX_ATTEMPTS = 3


def _check_base_name(name: str) -> str:
    if not is_valid_base_name(name):
        raise InvalidArgument(f"'{name[:80]}' is not a base name: {BASE_NAME_HELP}.")
    return name


def _actor(worker: str) -> str:
    return f"trainer:{worker}"


def _maybe_utc(moment: datetime | None) -> datetime | None:
    return utc(moment) if moment else None


@dataclass(frozen=True)
class TransferRecord:
    id: int
    adapter_id: str
    from_version: int
    to_base: str  # the target's name, as the trainers know it
    to_base_fingerprint: str | None  # once a trainer resolved the name
    status: TransferStatus
    requested_by: str
    worker: str | None
    attempts: int
    result_version: int | None  # the version made for the new base, if any
    progress: dict
    metrics: dict
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: TransferJob, adapter_id: str) -> TransferRecord:
        return cls(
            row.id,
            adapter_id,
            row.from_version,
            row.to_base,
            row.to_base_fingerprint,
            row.status,
            row.requested_by,
            row.worker,
            row.attempts,
            row.result_version,
            dict(row.progress),
            dict(row.metrics),
            row.reason,
            utc(row.created_at),
            _maybe_utc(row.started_at),
            _maybe_utc(row.finished_at),
        )


@dataclass(frozen=True)
class TransferClaim:
    job_id: int
    adapter_id: str
    from_version: int
    to_base: str
    attempt: int  # 1 for the first claim; more when an earlier trainer's lease lapsed


class TransferBook:
    """Transfer jobs, as processes of one base model see them: "the live version" is the
    live one on that base."""

    def __init__(self, db: Database, base: str) -> None:
        self.db, self.base = db, base

    # -- queueing ------------------------------------------------------------------------

    def queue(
        self,
        adapter_id: str,
        to_base: str,
        *,
        actor: str,
        version: int | None = None,
        reason: str | None = None,
    ) -> tuple[TransferRecord, bool]:
        """A job carrying `version` (default: the live one on this base) to `to_base`; False:
        the same transfer was queued, is running or passed already, and that job is returned."""
        _check_base_name(to_base)
        with self.db.transaction(routing_change=False) as session:
            adapter = self._locked(adapter_row(adapter_id, session=session), session=session)
            if version is None:
                version = self._live(adapter, adapter_id, session=session)
            return self._queue(
                adapter, adapter_id, version, to_base, actor, reason, session=session
            )

    def queue_live(
        self, to_base: str, *, actor: str, reason: str | None = None
    ) -> list[tuple[TransferRecord, bool]]:
        """A job for the live version of every adapter with one on this base, in one
        transaction; per adapter as `queue` answers."""
        _check_base_name(to_base)
        with self.db.transaction(routing_change=False) as session:
            rows = session.execute(
                select(Adapter, Tenant.name, LivePointer.live_version)
                .join(Tenant)
                .join(
                    LivePointer,
                    (LivePointer.adapter_id == Adapter.id)
                    & (LivePointer.base_fingerprint == self.base),
                )
                .where(LivePointer.live_version.is_not(None))
                .order_by(Tenant.name, Adapter.name)
                .with_for_update(of=Adapter)
            ).all()
            return [
                self._queue(
                    adapter,
                    f"{tenant}/{adapter.name}",
                    live,
                    to_base,
                    actor,
                    reason,
                    session=session,
                )
                for adapter, tenant, live in rows
                if live is not None
            ]  # always: the query asks for live versions

    @staticmethod
    def _locked(adapter: Adapter, *, session: Session) -> Adapter:
        # PostgreSQL: two servers queueing the same transfer at once make one job, not two.
        session.execute(select(Adapter.id).where(Adapter.id == adapter.id).with_for_update())
        return adapter

    def _live(self, adapter: Adapter, adapter_id: str, *, session: Session) -> int:
        live = live_version(adapter, self.base, session=session)
        if live is None:
            raise Conflict(
                f"'{adapter_id}' has no live version on this server's base model; "
                "name the version to carry over."
            )
        return live

    @staticmethod
    def _queue(
        adapter: Adapter,
        adapter_id: str,
        version: int,
        to_base: str,
        actor: str,
        reason: str | None,
        *,
        session: Session,
    ) -> tuple[TransferRecord, bool]:
        if version_row(adapter, adapter_id, version, session=session).status == "rejected":
            raise Conflict(
                f"Version {version} of '{adapter_id}' was rejected; carry over another version."
            )
        standing = session.scalar(
            select(TransferJob)
            .where(
                TransferJob.adapter_id == adapter.id,
                TransferJob.from_version == version,
                TransferJob.to_base == to_base,
                TransferJob.status.in_(STANDING),
            )
            .order_by(TransferJob.id.desc())
            .limit(1)
        )
        if standing is not None:
            return TransferRecord.of(standing, adapter_id), False
        job = TransferJob(
            adapter_id=adapter.id,
            from_version=version,
            to_base=to_base,
            status="queued",
            requested_by=actor,
            attempts=0,
        )
        session.add(job)
        session.flush()
        log_event(
            "transfer_queued",
            adapter,
            actor,
            session=session,
            from_version=version,
            reason=reason,
            job=job.id,
            to_base=to_base,
        )
        return TransferRecord.of(job, adapter_id), True

    # -- reading -------------------------------------------------------------------------

    def jobs(self, adapter_id: str, *, limit: int = 50) -> list[TransferRecord]:
        """The adapter's jobs, newest first."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(TransferJob)
                .where(TransferJob.adapter_id == adapter.id)
                .order_by(TransferJob.id.desc())
                .limit(limit)
            )
            return [TransferRecord.of(row, adapter_id) for row in rows]

    def job(self, adapter_id: str, job_id: int) -> TransferRecord:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            row = session.get(TransferJob, job_id)
            if row is None or row.adapter_id != adapter.id:
                raise NotFound(f"'{adapter_id}' has no transfer job {job_id}.")
            return TransferRecord.of(row, adapter_id)

    def find(
        self, *, ids: Collection[int] | None = None, to_base: str | None = None, limit: int = 100
    ) -> list[TransferRecord]:
        """Jobs of every adapter, newest first: those of `ids`, or to `to_base`, or all."""
        query = (
            select(TransferJob, Tenant.name, Adapter.name)
            .join(Adapter, Adapter.id == TransferJob.adapter_id)
            .join(Tenant)
        )
        if ids is not None:
            query = query.where(TransferJob.id.in_(sorted(ids)))
        if to_base is not None:
            query = query.where(TransferJob.to_base == to_base)
        with self.db.reading() as session:
            rows = session.execute(query.order_by(TransferJob.id.desc()).limit(limit))
            return [TransferRecord.of(job, f"{tenant}/{name}") for job, tenant, name in rows]

    # -- the trainer's side --------------------------------------------------------------

    def claim(self, *, worker: str, lease_s: float) -> TransferClaim | None:
        """The oldest queued job, or a running one whose lease lapsed, now `worker`'s; None
        when there is none."""
        now = utcnow()
        with self.db.transaction(routing_change=False) as session:
            while (job := self._claimable(now, session=session)) is not None:
                adapter = session.get_one(Adapter, job.adapter_id)
                lapsed = job.worker if job.status == "running" else None
                if lapsed is not None and job.attempts >= MAX_ATTEMPTS:
                    self._end(
                        job,
                        adapter,
                        "failed",
                        _actor(worker),
                        now,
                        session=session,
                        reason=f"the trainer stopped renewing its lease {job.attempts} "
                        "times (killed, or out of memory?); queue it again to retry",
                    )
                    continue
                take_lease(job, TRANSFER_JOBS, worker, lease_until(lease_s, now))
                job.attempts, job.started_at, job.progress = job.attempts + 1, now, {}
                log_event(
                    "transfer_started",
                    adapter,
                    _actor(worker),
                    session=session,
                    from_version=job.from_version,
                    job=job.id,
                    attempt=job.attempts,
                    reason=lapsed and f"the lease of {lapsed} lapsed; started again",
                )
                return TransferClaim(
                    job.id,
                    adapter_row_id_to_name(adapter.id, session=session),
                    job.from_version,
                    job.to_base,
                    job.attempts,
                )
        return None

    @staticmethod
    def _claimable(now: datetime, *, session: Session) -> TransferJob | None:
        # SKIP LOCKED: on PostgreSQL a second trainer passes over a job being claimed now.
        return session.scalar(
            select(TransferJob)
            .where(or_(TransferJob.status == "queued", TRANSFER_JOBS.lapsed(now)))
            .order_by(TransferJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )

    def renew(self, job_id: int, *, worker: str, lease_s: float, progress: dict) -> None:
        with self.db.transaction(routing_change=False) as session:
            renew_lease(
                TRANSFER_JOBS, job_id, worker, lease_until(lease_s), session=session
            ).progress = progress

    def attach(self, job_id: int, version: int, *, worker: str, session: Session) -> None:
        """Inside the transaction that registers the student: the job's version. A lost
        lease raises LeaseLost, and the registration rolls back with it."""
        still_held(TRANSFER_JOBS, job_id, worker, session=session).result_version = version

    def finish(
        self,
        job_id: int,
        status: TransferStatus,
        *,
        worker: str,
        reason: str,
        metrics: dict | None = None,
        to_base_fingerprint: str | None = None,
    ) -> None:
        """End a job `worker` holds (LeaseLost otherwise), with the figures it ended on."""
        if status not in ENDED:
            raise ValueError(f"a job ends {', '.join(ENDED)}, not {status}")
        with self.db.transaction(routing_change=False) as session:
            job = still_held(TRANSFER_JOBS, job_id, worker, session=session)
            job.metrics = metrics or job.metrics
            job.to_base_fingerprint = to_base_fingerprint or job.to_base_fingerprint
            self._end(
                job,
                session.get_one(Adapter, job.adapter_id),
                status,
                _actor(worker),
                utcnow(),
                reason=reason,
                session=session,
            )

    @staticmethod
    def _end(
        job: TransferJob,
        adapter: Adapter,
        status: TransferStatus,
        actor: str,
        now: datetime,
        *,
        reason: str,
        session: Session,
    ) -> None:
        job.status, job.reason, job.finished_at = status, reason, now
        release_lease(job, TRANSFER_JOBS)
        ended: dict[TransferStatus, EventKind] = {
            "passed": "transfer_passed",
            "rejected": "transfer_rejected",
            "failed": "transfer_failed",
        }
        log_event(
            ended[status],
            adapter,
            actor,
            session=session,
            from_version=job.from_version,
            to_version=job.result_version,
            reason=reason,
            job=job.id,
            to_base=job.to_base,
            metrics=dict(job.metrics),
        )
