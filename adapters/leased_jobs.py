"""Work that one worker at a time does under a lease: training runs, transfer jobs, rollouts.

A worker takes the lease on work that nobody holds, or whose holder stopped renewing (killed,
stuck), and renews it while it works. Every transaction that acts on the work first checks
that the worker still holds it (`still_held`): a worker whose lease lapsed, and whose work
another took meanwhile, must not act on what it decided before. When the work ends its lease
goes.

A worker that holds no lease is working on nothing the registry knows of, so what it left
behind (scratch directories) may go (`lease_holders`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from .db import Database
from .errors import Conflict
from .schema import Rollout, TrainingRun, TransferJob, utc, utcnow

# The tables of leased work: each function below works on any one of them.
LeasedRow = TypeVar("LeasedRow", TrainingRun, TransferJob, Rollout)


class LeaseLost(Conflict):
    """The work is no longer this worker's (its lease lapsed and another took it, or the work
    ended or moved on): the worker stops, and what it decided or made is void."""


@dataclass(frozen=True)
class LeasedWork(Generic[LeasedRow]):
    """Where one kind of work keeps its lease."""

    table: type[LeasedRow]
    held_status: str  # the status of work being done under a lease
    holder: str  # the column that names the worker holding it
    lost: str  # LeaseLost's message, with {id} and {worker}
    # A job's record keeps the worker that did it; a rollout's driver is only whoever drives
    # it now.
    keeps_holder: bool = True

    @property
    def holder_column(self) -> InstrumentedAttribute:
        return getattr(self.table, self.holder)

    def lapsed(self, now: datetime) -> ColumnElement[bool]:
        """SQL: held, but its holder stopped renewing."""
        return and_(self.table.status == self.held_status, self.table.lease_expires_at < now)

    def free_for(self, worker: str, now: datetime) -> ColumnElement[bool]:
        """SQL: nobody else holds it (no holder, `worker` already, or a lapsed lease)."""
        return or_(
            self.holder_column.is_(None),
            self.holder_column == worker,
            self.table.lease_expires_at < now,
        )


TRAINING_RUNS = LeasedWork(
    TrainingRun, "running", "worker", "Training run {id} is no longer held by {worker}."
)
TRANSFER_JOBS = LeasedWork(
    TransferJob, "running", "worker", "Transfer job {id} is no longer held by {worker}."
)
ROLLOUTS = LeasedWork(
    Rollout, "active", "driver", "rollout {id} is no longer {worker}'s to drive", keeps_holder=False
)


def lease_until(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


def take_lease(row: LeasedRow, work: LeasedWork[LeasedRow], worker: str, until: datetime) -> None:
    """`worker` holds the work until `until`; the caller found nobody else holds it."""
    row.status = work.held_status  # type: ignore[assignment]  # a status of the row's own table
    setattr(row, work.holder, worker)
    row.lease_expires_at = until


def still_held(
    work: LeasedWork[LeasedRow], row_id: int, worker: str, *, session: Session, lock: bool = False
) -> LeasedRow:
    """The work, if `worker` still holds it (LeaseLost otherwise); `lock`: locked for the
    change about to be made."""
    row = session.get(work.table, row_id, with_for_update=lock)
    if (
        row is None
        or row.status != work.held_status
        or getattr(row, work.holder) != worker
        or (row.lease_expires_at is None or utc(row.lease_expires_at) < utcnow())
    ):
        raise LeaseLost(work.lost.format(id=row_id, worker=worker))
    return row


def renew_lease(
    work: LeasedWork[LeasedRow], row_id: int, worker: str, until: datetime, *, session: Session
) -> LeasedRow:
    row = still_held(work, row_id, worker, session=session)
    row.lease_expires_at = until
    return row


def release_lease(row: LeasedRow, work: LeasedWork[LeasedRow]) -> None:
    """The work ended, or waits for an operator: nobody holds it."""
    row.lease_expires_at = None
    if not work.keeps_holder:
        setattr(row, work.holder, None)


def lease_holders(db: Database) -> set[str]:
    now = utcnow()
    with db.reading() as session:
        holders: set[str] = set()
        works: tuple[LeasedWork[Any], ...] = (TRAINING_RUNS, TRANSFER_JOBS, ROLLOUTS)
        for work in works:
            holders.update(
                session.scalars(
                    select(work.holder_column).where(
                        work.table.status == work.held_status,
                        work.table.lease_expires_at >= now,
                        work.holder_column.is_not(None),
                    )
                )
            )
        return holders
