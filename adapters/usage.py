"""Requests and tokens per adapter version and hour, summed over every server.

Each server counts in memory what it serves and adds its counts here every few seconds
(serve/usage.py), so that replicas add up and a request costs no database write. An addition
is an upsert: the first server to count an hour inserts its row, the others add to it. The
backends spell the upsert alike but each through its own dialect's `insert`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .db import Database
from .feedback import AdapterIds
from .schema import UsageHour, adapter_row, utc, utcnow

COUNTS = ("requests", "prompt_tokens", "completion_tokens")


@dataclass(frozen=True)
class UsageKey:
    adapter_id: str
    version: int
    hour: datetime  # the hour's start, UTC


@dataclass
class UsageCount:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: UsageCount) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class UsageRecord:
    version: int
    hour: datetime
    count: UsageCount


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _upsert(connection: Connection, values: dict) -> postgresql.Insert | sqlite.Insert:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(UsageHour).values(**values)
    table = UsageHour.__table__
    return statement.on_conflict_do_update(
        index_elements=["adapter_id", "version", "hour"],
        set_={name: table.c[name] + statement.excluded[name] for name in COUNTS},
    )


class UsageBook:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.adapter_ids = AdapterIds()

    def add(self, counts: Mapping[UsageKey, UsageCount]) -> None:
        """Add one server's counts in one transaction; adapters that do not exist (any
        more) are left out."""
        with self.db.writing_rows() as connection:
            rows = self.adapter_ids.rows({key.adapter_id for key in counts}, connection=connection)
            for key, count in counts.items():
                if key.adapter_id in rows:
                    connection.execute(
                        _upsert(
                            connection,
                            {
                                "adapter_id": rows[key.adapter_id][1],
                                "version": key.version,
                                "hour": key.hour,
                                **vars(count),
                            },
                        )
                    )

    def recent(self, adapter_id: str, *, hours: int) -> list[UsageRecord]:
        """The adapter's usage in the last `hours`, oldest first; empty hours left out."""
        since = hour_of(utcnow() - timedelta(hours=hours - 1))
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(UsageHour)
                .where(UsageHour.adapter_id == adapter.id, UsageHour.hour >= since)
                .order_by(UsageHour.hour, UsageHour.version)
            )
            return [
                UsageRecord(
                    row.version,
                    utc(row.hour),
                    UsageCount(row.requests, row.prompt_tokens, row.completion_tokens),
                )
                for row in rows
            ]
