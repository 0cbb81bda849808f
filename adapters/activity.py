"""An adapter's feedback over time, for the console: what is waiting, and what came per hour.

Counted by the database, hour by hour, so that a busy adapter costs a few rows, not one per
piece of feedback. The two backends name the hour differently (PostgreSQL truncates a
timestamp, SQLite formats its text); that difference stays in `_hour_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute

from .db import Database
from .schema import Feedback, adapter_row, utc, utcnow

PENDING = "pending"


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # the hour's start, UTC
    count: int


@dataclass(frozen=True)
class FeedbackActivity:
    adapter_id: str
    pending: int  # waiting for a training run
    per_hour: list[HourCount]  # oldest first; hours with none are left out


def _hour_of(column: InstrumentedAttribute[datetime], dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        # date_trunc cuts a timestamptz at the hours of the session's time zone (half past
        # in Asia/Kolkata): cut the UTC time instead (a plain timestamp, read back as UTC).
        return func.date_trunc("hour", func.timezone("UTC", column))
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_hour(value: datetime | str) -> datetime:
    return utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def read_feedback_activity(db: Database, adapter_id: str, *, hours: int) -> FeedbackActivity:
    since = utcnow() - timedelta(hours=hours)
    with db.reading() as session:
        adapter = adapter_row(adapter_id, session=session)
        hour = _hour_of(Feedback.created_at, session.get_bind().dialect.name)
        counted = session.execute(
            select(hour, func.count())
            .where(Feedback.adapter_id == adapter.id, Feedback.created_at >= since)
            .group_by(hour)
            .order_by(hour)
        ).all()
        pending = session.scalar(
            select(func.count()).where(
                Feedback.adapter_id == adapter.id, Feedback.status == PENDING
            )
        )
    return FeedbackActivity(
        adapter_id, pending or 0, [HourCount(_as_hour(at), count) for at, count in counted]
    )
