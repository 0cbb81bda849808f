"""Where a piece of feedback came from, across the upgrade that began to record it: the
scores the trainer stored for its judge before then are told from applications' ones (on
SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import text

from loraloop.adapters.db import Database
from loraloop.adapters.schema import utcnow

# judge, completion_id, Idempotency-Key -> the source the upgrade gives the row
STORED = [
    ("rules:3f2a9c01d4e5", None, None, "trainer"),
    ("llm:v2-both:rubric-0a1b2c3d4e:grader", None, None, "trainer"),
    ("python:judges.demo:score", None, None, "trainer"),
    ("thumbs", None, None, "application"),
    ("rules:3f2a9c01d4e5", "chatcmpl-1", None, "application"),  # names a completion
    ("llm:mine", None, "key-1", "application"),  # sent with an Idempotency-Key
]


def test_the_upgrade_tells_the_trainers_scores_from_applications(database):
    db = Database(database)
    db.upgrade("0006")
    now = utcnow()
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tenants (id, name, created_at, created_by) "
                "VALUES (1, 'acme', :now, 'test')"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO adapters (id, tenant_id, name, created_at, "
                "created_by) VALUES (1, 1, 'support', :now, 'test')"
            ),
            {"now": now},
        )
        for judge, completion_id, key, _ in STORED:
            connection.execute(
                text(
                    "INSERT INTO feedback (tenant_id, adapter_id, version, kind, prompt, "
                    "completion, score, judge, completion_id, idempotency_key, status, "
                    "created_at) VALUES (1, 1, 1, 'score', :prompt, 'an answer', 1.0, :judge, "
                    ":completion_id, :key, 'pending', :now)"
                ),
                {
                    "prompt": '{"text": "hi"}',
                    "judge": judge,
                    "completion_id": completion_id,
                    "key": key,
                    "now": now,
                },
            )
    db.upgrade()
    with db.engine.connect() as connection:
        sources = connection.execute(text("SELECT source FROM feedback ORDER BY id")).scalars()
        assert list(sources) == [source for *_, source in STORED]
    db.dispose()
