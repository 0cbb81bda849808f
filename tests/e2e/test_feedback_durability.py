"""Feedback survives a killed server: every acknowledged event is stored exactly once.

A real `loraloop serve` (reference engine: it starts in seconds) takes feedback from many
clients, each event with its own Idempotency-Key, and is SIGKILLed mid-stream. A new server
on the same registry then gets every event that was not acknowledged, as clients retry. The
rows in the database are counted: no acknowledged event lost, none stored twice. SIGKILL
proves durability against a process crash only; power loss is the fsync's business
(SQLite `synchronous=FULL`, PostgreSQL's own commit).

Below it, the group writer on real databases: many submissions in one transaction, each
with its own outcome.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database
from loraloop.adapters.errors import Conflict, NotFound
from loraloop.adapters.feedback import (
    AdapterIds,
    FeedbackBook,
    NewFeedback,
    Submission,
    write_group,
)
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.schema import Feedback
from loraloop.adapters.store import WeightStore
from loraloop.adapters.tenants import TenantBook
from loraloop.adapters.versions import AdapterBook, RegistrationPolicy
from loraloop.serve.cli.client import AdminClient
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME, start_server
from ..support import ServerProcess

EVENTS, CLIENTS, KILL_AFTER_ACKS = 600, 16, 150
ADAPTER = "dur/support"


def event(n: int) -> dict:
    return {
        "adapter": ADAPTER,
        "prompt": f"question {n}?",
        "chosen": f"good {n}.",
        "rejected": f"bad {n}.",
    }


def serve(demo_model: Path, data_dir: Path, url: str, log: Path) -> ServerProcess:
    return start_server(
        [
            "--model",
            str(demo_model),
            "--engine",
            "reference",
            "--served-model-name",
            BASE_MODEL_NAME,
            "--database-url",
            url,
        ],
        log,
        data_dir,
    ).wait_ready()


def provision(server: ServerProcess, adapter_dir: Path) -> str:
    with AdminClient(server.url, ADMIN_KEY, actor="durability") as admin:
        admin.create_tenant("dur")
        key = admin.issue_key("dur", label="tests")["key"]
        admin.create_adapter(ADAPTER)
        version, _ = admin.register(ADAPTER, adapter_dir)
        admin.promote(ADAPTER, version["version"], expected_live=0)
    return key


async def post_until_killed(
    url: str, key: str, pending: list[int], acked: dict[int, int], server: ServerProcess
) -> None:
    """CLIENTS clients post events; the server is SIGKILLed once KILL_AFTER_ACKS are
    acknowledged. Events whose request failed stay in `pending`."""
    queue = list(pending)
    pending.clear()

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            n = queue.pop()
            try:
                response = await http.post(
                    "/v1/feedback", json=event(n), headers={"Idempotency-Key": f"event-{n}"}
                )
            except httpx.TransportError:
                pending.append(n)  # unacknowledged: a client would retry it
                continue
            if response.status_code != 201:
                pending.append(n)
                continue
            acked[n] = response.json()["id"]
            if len(acked) == KILL_AFTER_ACKS:
                os.killpg(server.process.pid, signal.SIGKILL)

    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))


def retry_all(url: str, key: str, numbers: list[int]) -> dict[int, tuple[int, str]]:
    """Every event posted again until stored: (row id, Idempotent-Replayed) by event."""
    answers = {}
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        for n in numbers:
            response = http.post(
                "/v1/feedback", json=event(n), headers={"Idempotency-Key": f"event-{n}"}
            )
            assert response.status_code == 201, response.text
            answers[n] = (response.json()["id"], response.headers["Idempotent-Replayed"])
    return answers


def stored_rows(url: str) -> dict[str, list[int]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Feedback.idempotency_key, Feedback.id)).all()
    finally:
        engine.dispose()
    by_key: dict[str, list[int]] = {}
    for key, row_id in rows:
        by_key.setdefault(key, []).append(row_id)
    return by_key


def test_a_killed_server_loses_no_acknowledged_feedback(database, demo_model, tmp_path):
    adapter_dir = build_random_adapter(demo_model, tmp_path / "adapter", seed=3)
    data_dir = tmp_path / "data"
    first = serve(demo_model, data_dir, database, tmp_path / "first.log")
    try:
        key = provision(first, adapter_dir)
        pending, acked = list(range(EVENTS)), {}
        asyncio.run(post_until_killed(first.url, key, pending, acked, first))
    finally:
        first.stop()
    assert first.process.returncode == -signal.SIGKILL, "the server was not killed mid-stream"
    assert KILL_AFTER_ACKS <= len(acked) < EVENTS and pending, (len(acked), len(pending))

    second = serve(demo_model, data_dir, database, tmp_path / "second.log")
    try:
        retried = retry_all(second.url, key, sorted(pending))
        # An acknowledged event sent again is answered with its first result.
        replays = retry_all(second.url, key, sorted(acked)[:20])
    finally:
        second.stop()
    rows = stored_rows(database)
    assert sorted(rows) == sorted(f"event-{n}" for n in range(EVENTS))
    assert all(len(ids) == 1 for ids in rows.values()), "an event was stored twice"
    assert all(rows[f"event-{n}"] == [row_id] for n, row_id in acked.items())
    assert all(replays[n] == (acked[n], "true") for n in replays)
    assert all(rows[f"event-{n}"] == [row_id] for n, (row_id, _) in retried.items())


# --- the group writer, on real databases -------------------------------------------------

PROMPT = StoredPrompt(text="hi")


def item(adapter: str = "acme/support", chosen: str = "yes") -> NewFeedback:
    return NewFeedback(adapter, None, "preference", PROMPT, chosen=chosen, rejected="no")


@pytest.fixture
def book(database, tmp_path, demo_model):
    db = Database(database)
    db.upgrade()
    for tenant in ("acme", "globex"):
        TenantBook(db).create(tenant, actor="t")
    policy = RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30)
    registry = AdapterBook(db, WeightStore(tmp_path / "w"), policy)
    for adapter in ("acme/support", "globex/chat"):
        registry.create(adapter, actor="t")
    yield FeedbackBook(db)
    db.dispose()


def count_rows(book: FeedbackBook) -> int:
    with book.db.reading() as session:
        return session.scalar(select(func.count()).select_from(Feedback))


def test_one_group_answers_each_submission_on_its_own(book):
    outcomes = book.submit_many(
        [
            Submission(item(), "k", "h1"),
            Submission(item(), "k", "h1"),  # the same request again, in the same group
            Submission(item(chosen="other"), "k", "h2"),  # the same key for another body
            Submission(item("acme/missing")),
            Submission(item("globex/chat"), "k", "h3"),  # keys belong to one tenant
            Submission(item()),
        ]
    )
    first, again, other, missing, globex, keyless = outcomes
    assert first[1] is False and again == (first[0], True)
    assert isinstance(other, Conflict) and isinstance(missing, NotFound)
    assert globex[1] is False and globex[0].adapter_id == "globex/chat"
    assert keyless[1] is False
    assert len({first[0].id, globex[0].id, keyless[0].id}) == 3
    assert count_rows(book) == 3
    later = book.submit_many([Submission(item(), "k", "h1"), Submission(item(), "k", "h9")])
    assert later[0] == (first[0], True) and isinstance(later[1], Conflict)
    assert count_rows(book) == 3


def test_a_thousand_lines_are_one_insert_with_ids_in_order(book):
    outcomes = book.submit_many(
        [Submission(item(chosen=f"c{i}"), f"b{i}", "h") for i in range(1000)]
    )
    ids = [record.id for record, replayed in outcomes]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    with book.db.reading() as session:
        stored = dict(session.execute(select(Feedback.id, Feedback.chosen)).all())
    assert all(stored[record.id] == f"c{i}" for i, (record, _) in enumerate(outcomes))


def test_a_key_committed_by_another_server_meanwhile_costs_only_its_row(book):
    """Two servers on PostgreSQL: another commits key "k" after this group checked for it.
    The group's insert fails on the unique key; each row is then stored on its own."""
    if book.db.is_sqlite:
        pytest.skip("SQLite's write lock keeps a second writer out between check and insert")
    other = book.db.engine.connect()
    transaction = other.begin()
    write_group([Submission(item(), "k", "h")], AdapterIds(), connection=other)
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            book.submit_many(
                [Submission(item(), "k", "h"), Submission(item(chosen="new"), "j", "h")]
            )
        )
    )
    worker.start()
    time.sleep(0.5)  # the group is now waiting on the uncommitted "k"
    transaction.commit()
    other.close()
    worker.join(timeout=30)
    replayed, new = results[0]
    assert replayed[1] is True and new[1] is False
    assert count_rows(book) == 2


def test_each_row_is_its_own_key(book):
    key = uuid.uuid4().hex
    record, replayed = book.submit(item(), idempotency_key=key, request_hash="h")
    assert (replayed, book.submit(item(), idempotency_key=key, request_hash="h")) == (
        False,
        (record, True),
    )
    with pytest.raises(Conflict):
        book.submit(item(), idempotency_key=key, request_hash="other")
