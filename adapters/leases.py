"""Who holds work now: the workers whose lease on a training run, a transfer job or a
rollout has not lapsed. A worker that holds none is not working on anything the registry
knows of, so what it left behind (scratch directories) may go."""

from __future__ import annotations

from sqlalchemy import select

from .db import Database
from .schema import Rollout, TrainingRun, TransferJob, utcnow


def lease_holders(db: Database) -> set[str]:
    now = utcnow()
    with db.reading() as session:
        holders: set[str] = set()
        for table, holder, status in ((TrainingRun, TrainingRun.worker, "running"),
                                      (TransferJob, TransferJob.worker, "running"),
                                      (Rollout, Rollout.driver, "active")):
            holders.update(session.scalars(select(holder).where(
                table.status == status, table.lease_expires_at >= now, holder.is_not(None))))
        return holders
