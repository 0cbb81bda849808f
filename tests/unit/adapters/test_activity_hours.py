"""Hours of activity are UTC hours whatever the database's time zone: feedback per hour and
requests per hour begin on the hour in UTC and go on the wire with `Z`, on a PostgreSQL
server whose sessions run in Asia/Kolkata (UTC+05:30) as on SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from loraloop.adapters.activity import read_feedback_activity
from loraloop.adapters.db import Database
from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import registry_on
from loraloop.adapters.schema import utcnow
from loraloop.adapters.store import WeightStore
from loraloop.adapters.usage import UsageBook, UsageCount, UsageKey, hour_of
from loraloop.adapters.versions import RegistrationPolicy
from loraloop.serve.admin.protocol import FeedbackActivityPublic, UsagePublic

from ...support import database_url

ADAPTER = "acme/support"


@pytest.fixture(params=["sqlite", "postgresql-kolkata"])
def zoned_registry(request, tmp_path, base):
    with database_url(request.param.split("-")[0], tmp_path) as url:
        if request.param.endswith("kolkata"):
            name = make_url(url).database
            server = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with server.connect() as connection:
                connection.execute(text(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'"))
            server.dispose()
        db = Database(url)
        db.upgrade()
        registry = registry_on(
            db,
            WeightStore(tmp_path / "weights"),
            RegistrationPolicy(base, max_rank=64, max_bytes=1 << 30),
        )
        registry.tenants.create("acme", actor="test")
        registry.adapters.create(ADAPTER, actor="test")
        yield registry
        db.dispose()


def test_hours_are_utc_hours_on_the_wire_with_z(zoned_registry):
    db = zoned_registry.db
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
    zoned_registry.feedback.submit(
        NewFeedback(
            ADAPTER,
            None,
            "score",
            StoredPrompt(text="hi"),
            completion="hello",
            score=1.0,
            judge="app",
        )
    )
    this_hour = hour_of(utcnow())
    UsageBook(db).add({UsageKey(ADAPTER, 1, this_hour): UsageCount(1, 5, 7)})

    activity = read_feedback_activity(db, ADAPTER, hours=2)
    (usage,) = UsageBook(db).recent(ADAPTER, hours=2)
    hours = [count.hour for count in activity.per_hour] + [usage.hour]
    assert all(hour.utcoffset() == timedelta(0) for hour in hours), hours
    assert hours[-1] == this_hour
    assert this_hour - timedelta(hours=1) <= hours[0] <= this_hour  # the feedback's hour
    assert hours[0].minute == 0
    activity_wire = FeedbackActivityPublic.model_validate(activity).model_dump(mode="json")
    wire = [
        activity_wire["per_hour"][0]["hour"],
        UsagePublic.model_validate(usage).model_dump(mode="json")["hour"],
    ]
    assert all(stamp.endswith(":00:00Z") for stamp in wire), wire
