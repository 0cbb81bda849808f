"""Feedback storage: preference pairs and scores, recorded completions, and their counts.

A feedback row is committed before the client hears "created". Rows are written in groups:
what a server has waiting when its writer comes round (concurrent requests, or every line of
a batch) is one transaction. Each submission gets its own outcome: its record, a replay of
the first result stored under its Idempotency-Key (a client that retries is answered with
it and nothing new is stored), or the error that refused it (an unknown adapter, a key
already used for a different body: a conflict). One refused submission never refuses the
rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, func, insert, select, tuple_
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from .db import Database
from .errors import Conflict, NotFound
from .names import is_valid_adapter_id
from .prompts import StoredPrompt
from .schema import (
    Adapter,
    Feedback,
    RecordedCompletion,
    Tenant,
    adapter_row,
    adapter_row_id_to_name,
    utc,
    utcnow,
)

# Who stored a piece of feedback: an application through the feedback API, or the trainer
# (its judge's scores of answers it sampled, to train on). Only applications' feedback is
# evidence of what users got.
FeedbackSource = Literal["application", "trainer"]


@dataclass(frozen=True)
class NewFeedback:
    adapter_id: str
    version: int | None
    kind: str  # "preference" | "score"
    prompt: StoredPrompt
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    score: float | None = None
    judge: str | None = None  # who gave a score, as its giver names itself
    rationale: str | None = None
    completion_id: str | None = None
    source: FeedbackSource = "application"


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    adapter_id: str
    version: int | None
    kind: str
    status: str
    created_at: datetime


@dataclass(frozen=True)
class Submission:
    item: NewFeedback
    idempotency_key: str | None = None
    request_hash: str | None = None  # of the request body; required with a key


# (record, True when it replays the first result stored under its key), or what refused it.
Outcome = tuple[FeedbackRecord, bool] | Exception

# Built once: Core statements whose compiled form SQLAlchemy caches, the key list expanded
# at execution. Building an IN clause of literals per group cost more than the insert.
_feedback = Feedback.__table__
_STORED_UNDER_KEYS = select(
    _feedback.c.id,
    _feedback.c.idempotency_key,
    _feedback.c.request_hash,
    _feedback.c.adapter_id,
    _feedback.c.version,
    _feedback.c.kind,
    _feedback.c.status,
    _feedback.c.created_at,
).where(
    _feedback.c.tenant_id == bindparam("tenant"),
    _feedback.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
_INSERT = insert(_feedback).returning(_feedback.c.id, sort_by_parameter_order=True)
# Rows per INSERT statement. psycopg parses the placeholders of a statement in Python unless
# it has at most 50 (then it caches the parse): 3 rows of 16 columns keep every page cached,
# where one 16-row statement cost milliseconds to parse. SQLite's driver has no such cost.
_PAGES = {"postgresql": {"insertmanyvalues_page_size": 3}}


def key_conflict() -> Conflict:
    return Conflict(
        "This Idempotency-Key was already used with a different request; "
        "use a new key for new feedback."
    )


def unknown_adapter(adapter_id: str) -> NotFound:
    return NotFound(f"There is no adapter '{adapter_id}'. Create it first.")


class AdapterIds:
    """Adapter ids ("tenant/name") and their (tenant row, adapter row) ids, read from the
    database once per adapter. Safe to keep for the life of the process: tenants and adapters
    are never deleted or renamed, so an id once read never changes meaning."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, int]] = {}
        self._names: dict[int, str] = {}

    def rows(
        self, adapter_ids: Iterable[str], *, connection: Connection
    ) -> dict[str, tuple[int, int]]:
        """(tenant row id, adapter row id) of each adapter that exists; missing ones are
        left out (and looked up again next time: they may be created meanwhile)."""
        wanted = set(adapter_ids)
        unknown = [
            tuple(a.split("/", 1)) for a in wanted - self._rows.keys() if is_valid_adapter_id(a)
        ]
        if unknown:
            found = connection.execute(
                select(Tenant.name, Adapter.name, Adapter.tenant_id, Adapter.id)
                .join(Tenant)
                .where(tuple_(Tenant.name, Adapter.name).in_(unknown))
            )
            for tenant, name, tenant_row, adapter_row in found:
                self._rows[f"{tenant}/{name}"] = (tenant_row, adapter_row)
                self._names[adapter_row] = f"{tenant}/{name}"
        return {a: self._rows[a] for a in wanted if a in self._rows}

    def name(self, adapter_row: int, *, connection: Connection) -> str:
        if adapter_row not in self._names:
            tenant, name = connection.execute(
                select(Tenant.name, Adapter.name).join(Tenant).where(Adapter.id == adapter_row)
            ).one()
            self._names[adapter_row] = f"{tenant}/{name}"
        return self._names[adapter_row]


def write_group(
    submissions: Sequence[Submission], ids: AdapterIds, *, connection: Connection
) -> list[Outcome]:
    """Store every submission that is new, in one multi-row insert; answer the rest."""
    adapters = ids.rows({s.item.adapter_id for s in submissions}, connection=connection)
    stored = _stored_under_keys(submissions, adapters, connection=connection)
    outcomes: list[Outcome | None] = [None] * len(submissions)
    first_with_key: dict[tuple[int, str], int] = {}  # within this group
    new: list[int] = []
    repeats: list[tuple[int, int]] = []  # (a repeat, the first with its key), within the group
    for i, s in enumerate(submissions):
        rows = adapters.get(s.item.adapter_id)
        key = (rows[0], s.idempotency_key) if rows and s.idempotency_key is not None else None
        if rows is None:
            outcomes[i] = unknown_adapter(s.item.adapter_id)
        elif key in stored:
            outcomes[i] = _replay(stored[key], s, ids, connection=connection)
        elif key is not None and key in first_with_key:
            first = first_with_key[key]
            if submissions[first].request_hash != s.request_hash:
                outcomes[i] = key_conflict()
            else:  # settled once the first is inserted: the same body replays its result
                repeats.append((i, first))
        else:
            if key is not None:
                first_with_key[key] = i
            new.append(i)
    records = _insert([submissions[i] for i in new], adapters, connection=connection)
    for i, record in zip(new, records, strict=True):
        outcomes[i] = (record, False)
    for i, first in repeats:
        inserted = outcomes[first]
        assert isinstance(inserted, tuple)  # the first with a key that no row had: inserted
        outcomes[i] = (inserted[0], True)
    settled = [outcome for outcome in outcomes if outcome is not None]
    assert len(settled) == len(submissions)  # each submission was inserted, replayed or refused
    return settled


def _stored_under_keys(
    submissions: Sequence[Submission],
    adapters: dict[str, tuple[int, int]],
    *,
    connection: Connection,
) -> dict[tuple[int, str], Row]:
    """Rows already stored under the group's (tenant, Idempotency-Key) pairs: one query."""
    keys: dict[int, set[str]] = {}  # by tenant row id; a group seldom spans tenants
    for s in submissions:
        if s.idempotency_key is not None and s.item.adapter_id in adapters:
            keys.setdefault(adapters[s.item.adapter_id][0], set()).add(s.idempotency_key)
    stored = {}
    for tenant, tenant_keys in keys.items():
        rows = connection.execute(
            _STORED_UNDER_KEYS, {"tenant": tenant, "keys": sorted(tenant_keys)}
        )
        stored.update({(tenant, row.idempotency_key): row for row in rows})
    return stored


def _replay(
    row: Row, submission: Submission, ids: AdapterIds, *, connection: Connection
) -> Outcome:
    if row.request_hash != submission.request_hash:
        return key_conflict()
    record = FeedbackRecord(
        row.id,
        ids.name(row.adapter_id, connection=connection),
        row.version,
        row.kind,
        row.status,
        utc(row.created_at),
    )
    return record, True


def _insert(
    submissions: list[Submission], adapters: dict[str, tuple[int, int]], *, connection: Connection
) -> list[FeedbackRecord]:
    """One executemany-style INSERT ... RETURNING id for the lot; ids in submission order."""
    if not submissions:
        return []
    now = utcnow()  # the group commits at one moment
    values = [_values(s, adapters[s.item.adapter_id], now) for s in submissions]
    ids = (
        connection.execute(
            _INSERT, values, execution_options=_PAGES.get(connection.dialect.name, {})
        )
        .scalars()
        .all()
    )
    return [
        FeedbackRecord(row_id, s.item.adapter_id, s.item.version, s.item.kind, "pending", now)
        for row_id, s in zip(ids, submissions, strict=True)
    ]


def _values(s: Submission, rows: tuple[int, int], now: datetime) -> dict:
    item = s.item
    return {
        "tenant_id": rows[0],
        "adapter_id": rows[1],
        "version": item.version,
        "kind": item.kind,
        "prompt": item.prompt.to_json(),
        "chosen": item.chosen,
        "rejected": item.rejected,
        "completion": item.completion,
        "score": item.score,
        "judge": item.judge,
        "rationale": item.rationale,
        "completion_id": item.completion_id,
        "source": item.source,
        "status": "pending",
        "idempotency_key": s.idempotency_key,
        "request_hash": s.request_hash,
        "created_at": now,
    }


@dataclass(frozen=True)
class CompletionToRecord:
    completion_id: str
    choice: int
    adapter_id: str
    version: int
    prompt: StoredPrompt
    output: str


@dataclass(frozen=True)
class RecordedCompletionRecord:
    adapter_id: str
    version: int
    prompt: StoredPrompt
    output: str


@dataclass(frozen=True)
class FeedbackStats:
    adapter_id: str
    total: int
    by_kind: dict[str, int]
    by_status: dict[str, int]
    by_version: dict[str, int]  # "3", or "unknown" when the feedback did not say


def _tenant_of(adapter_id: str) -> str:
    return adapter_id.split("/", 1)[0]


class FeedbackBook:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.adapter_ids = AdapterIds()

    def submit(
        self,
        item: NewFeedback,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[FeedbackRecord, bool]:
        """Store one piece of feedback. True: a retry, answered with the first result."""
        outcome = self.submit_many([Submission(item, idempotency_key, request_hash)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def submit_many(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """Store a group in one transaction; an outcome per submission, in order. Returns
        only once the new rows are committed."""
        try:
            return self._write(submissions)
        except IntegrityError:
            # Another server committed one of these keys between our check and our insert
            # (SQLite's write lock rules that out; PostgreSQL's does not). Store them one by
            # one, so that the race costs nothing to the submissions that did not lose it.
            return [self._submit_alone(s) for s in submissions]

    def _write(self, submissions: Sequence[Submission]) -> list[Outcome]:
        with self.db.writing_rows() as connection:
            return write_group(submissions, self.adapter_ids, connection=connection)

    def _submit_alone(self, submission: Submission) -> Outcome:
        try:
            return self._write([submission])[0]
        except IntegrityError:
            pass
        try:  # the row that won is committed by now: this finds it (a replay, or a 409)
            return self._write([submission])[0]
        except IntegrityError as exc:
            return exc

    def record(self, completions: Iterable[CompletionToRecord]) -> None:
        with self.db.transaction(routing_change=False) as session:
            for c in completions:
                adapter = adapter_row(c.adapter_id, session=session)
                session.add(
                    RecordedCompletion(
                        completion_id=c.completion_id,
                        choice=c.choice,
                        tenant_id=adapter.tenant_id,
                        adapter_id=adapter.id,
                        version=c.version,
                        prompt=c.prompt.to_json(),
                        output=c.output,
                    )
                )

    def recorded(
        self, tenant: str | None, completion_id: str, choice: int
    ) -> RecordedCompletionRecord:
        """A recorded completion; another tenant's looks exactly like a missing one."""
        with self.db.reading() as session:
            row = session.get(RecordedCompletion, (completion_id, choice))
            adapter_id = adapter_row_id_to_name(row.adapter_id, session=session) if row else None
        if (
            row is None
            or adapter_id is None
            or (tenant is not None and _tenant_of(adapter_id) != tenant)
        ):
            raise NotFound(
                f"No recorded completion '{completion_id[:100]}' (choice {choice}). "
                "Completions are kept only for adapters whose policy records them."
            )
        return RecordedCompletionRecord(
            adapter_id, row.version, StoredPrompt.from_json(row.prompt), row.output
        )

    def recorded_prompts(self, adapter_id: str, limit: int, scan: int = 2000) -> list[StoredPrompt]:
        """Up to `limit` distinct prompts of the adapter's recorded completions, newest first
        (looking at the newest `scan` completions only)."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(RecordedCompletion.prompt)
                .where(RecordedCompletion.adapter_id == adapter.id)
                .order_by(RecordedCompletion.created_at.desc())
                .limit(scan)
            )
            prompts = dict.fromkeys(StoredPrompt.from_json(row) for row in rows)
        return list(prompts)[:limit]

    def feedback_prompts(self, adapter_id: str, limit: int, scan: int = 2000) -> list[StoredPrompt]:
        """Up to `limit` distinct prompts of the adapter's feedback, whatever its status
        (pending, consumed, ...), newest first (looking at the newest `scan` rows only)."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(Feedback.prompt)
                .where(Feedback.adapter_id == adapter.id)
                .order_by(Feedback.id.desc())
                .limit(scan)
            )
            prompts = dict.fromkeys(StoredPrompt.from_json(row) for row in rows)
        return list(prompts)[:limit]

    def stats(self, adapter_id: str) -> FeedbackStats:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.execute(
                select(Feedback.kind, Feedback.status, Feedback.version, func.count())
                .where(Feedback.adapter_id == adapter.id)
                .group_by(Feedback.kind, Feedback.status, Feedback.version)
            ).all()
        by_kind: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        by_version: Counter[str] = Counter()
        for kind, status, version, count in rows:
            by_kind[kind] += count
            by_status[status] += count
            by_version[str(version) if version is not None else "unknown"] += count
        return FeedbackStats(
            adapter_id, sum(by_kind.values()), dict(by_kind), dict(by_status), dict(by_version)
        )
