"""Usage per adapter version and hour: each server's counts, added up in a real registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database
from loraloop.adapters.schema import utcnow
from loraloop.adapters.store import WeightStore
from loraloop.adapters.tenants import TenantBook
from loraloop.adapters.usage import UsageBook, hour_of
from loraloop.adapters.versions import AdapterBook, RegistrationPolicy
from loraloop.serve.usage import UsageRecorder

ADAPTER = "acme/support"
# Nothing listens on port 1: every write fails at once, as while the database is away.
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


@pytest.fixture
def db(database, tmp_path, demo_model) -> Iterator[Database]:
    """A registry with one adapter."""
    db = Database(database)
    db.upgrade()
    TenantBook(db).create("acme", actor="test")
    policy = RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30)
    AdapterBook(db, WeightStore(tmp_path), policy).create(ADAPTER, actor="test")
    yield db
    db.dispose()


def counted(db: Database, since) -> list[tuple]:
    return [
        (r.hour - since, r.version, vars(r.count)) for r in UsageBook(db).recent(ADAPTER, hours=2)
    ]


def test_servers_counts_add_up_per_version_and_hour(db):
    last_hour = hour_of(utcnow()) - timedelta(hours=1)
    now = [last_hour + timedelta(minutes=59)]
    first, second = (UsageRecorder(UsageBook(db), clock=lambda: now[0]) for _ in range(2))
    first.record(ADAPTER, 1, prompt_tokens=10, completion_tokens=5)
    second.record(ADAPTER, 1, prompt_tokens=20, completion_tokens=7)
    second.record(ADAPTER, 2, prompt_tokens=1, completion_tokens=1)
    now[0] += timedelta(minutes=2)  # into the next hour
    first.record(ADAPTER, 1, prompt_tokens=3, completion_tokens=3)
    first.record("acme/unknown", 1, prompt_tokens=3, completion_tokens=3)  # left out
    for server in (first, second, second):  # the second flush of a server adds nothing
        asyncio.run(server.flush())
    assert counted(db, last_hour) == [
        (timedelta(0), 1, {"requests": 2, "prompt_tokens": 30, "completion_tokens": 12}),
        (timedelta(0), 2, {"requests": 1, "prompt_tokens": 1, "completion_tokens": 1}),
        (timedelta(hours=1), 1, {"requests": 1, "prompt_tokens": 3, "completion_tokens": 3}),
    ]


def test_counts_that_could_not_be_written_go_with_the_next_write(db):
    away, now = Database(UNREACHABLE), utcnow()
    recorder = UsageRecorder(UsageBook(away), clock=lambda: now)
    recorder.record(ADAPTER, 1, prompt_tokens=4, completion_tokens=2)
    asyncio.run(recorder.flush())  # refused, and kept
    recorder.record(ADAPTER, 1, prompt_tokens=6, completion_tokens=3)
    recorder.book = UsageBook(db)  # the registry is back
    asyncio.run(recorder.flush())
    assert counted(db, hour_of(now)) == [
        (timedelta(0), 1, {"requests": 2, "prompt_tokens": 10, "completion_tokens": 5})
    ]
    away.dispose()
