"""Registry-wide counts for monitoring: changes by kind and training runs by status.

They happen in every process that shares the registry (servers, trainers), so they are read
from the database rather than counted in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from .db import Database
from .schema import Event, TrainingRun


@dataclass(frozen=True)
class RegistryCounts:
    events_by_kind: dict[str, int]  # promote, rollback, reject, register, ...
    runs_by_status: dict[str, int]  # queued, running, promoted, rejected, failed


def read_counts(db: Database) -> RegistryCounts:
    with db.reading() as session:
        events = session.execute(select(Event.kind, func.count()).group_by(Event.kind)).all()
        runs = session.execute(
            select(TrainingRun.status, func.count()).group_by(TrainingRun.status)
        ).all()
    return RegistryCounts(dict(events), dict(runs))
