"""Feedback storage: preference pairs and scores, recorded completions, and their counts.

A feedback row is committed before the client hears "created". A client that retries with the
same Idempotency-Key gets the first result back and nothing new is stored; the same key with
a different body is a conflict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database
from .errors import Conflict, NotFound
from .records import _utc
from .registry import adapter_row
from .schema import Adapter, Feedback, RecordedCompletion, Tenant


@dataclass(frozen=True)
class NewFeedback:
    adapter_id: str
    version: int | None
    kind: str  # "preference" | "score"
    prompt: dict  # {"messages": [{"role", "content"}, ...]} or {"text": "..."}
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    score: float | None = None
    judge: str | None = None
    rationale: str | None = None
    completion_id: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    adapter_id: str
    version: int | None
    kind: str
    status: str
    created_at: datetime

    @classmethod
    def of(cls, row: Feedback, adapter_id: str) -> FeedbackRecord:
        return cls(row.id, adapter_id, row.version, row.kind, row.status, _utc(row.created_at))


@dataclass(frozen=True)
class CompletionToRecord:
    completion_id: str
    choice: int
    adapter_id: str
    version: int
    prompt: dict
    output: str


@dataclass(frozen=True)
class RecordedCompletionRecord:
    adapter_id: str
    version: int
    prompt: dict
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

    def submit(self, item: NewFeedback, *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> tuple[FeedbackRecord, bool]:
        """Store one piece of feedback. True: a retry, answered with the first result."""
        try:
            with self.db.transaction(routing_change=False) as session:
                replay = self._replay(item, idempotency_key, request_hash, session=session)
                if replay is not None:
                    return replay, True
                return self._insert(item, idempotency_key, request_hash, session=session), False
        except IntegrityError:
            # Another request with the same key committed between our check and insert.
            with self.db.reading() as session:
                replay = self._replay(item, idempotency_key, request_hash, session=session)
            if replay is None:
                raise
            return replay, True

    def _replay(self, item: NewFeedback, key: str | None, request_hash: str | None, *,
                session: Session) -> FeedbackRecord | None:
        if key is None:
            return None
        adapter = adapter_row(item.adapter_id, session=session)
        row = session.scalar(select(Feedback).where(
            Feedback.tenant_id == adapter.tenant_id, Feedback.idempotency_key == key))
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise Conflict("This Idempotency-Key was already used with a different request; "
                           "use a new key for new feedback.")
        stored_for = adapter_row_id_to_name(row.adapter_id, session=session)
        return FeedbackRecord.of(row, stored_for)

    def _insert(self, item: NewFeedback, key: str | None, request_hash: str | None, *,
                session: Session) -> FeedbackRecord:
        adapter = adapter_row(item.adapter_id, session=session)
        row = Feedback(
            tenant_id=adapter.tenant_id, adapter_id=adapter.id, version=item.version,
            kind=item.kind, prompt=item.prompt, chosen=item.chosen, rejected=item.rejected,
            completion=item.completion, score=item.score, judge=item.judge,
            rationale=item.rationale, completion_id=item.completion_id, status="pending",
            idempotency_key=key, request_hash=request_hash,
        )
        session.add(row)
        session.flush()
        return FeedbackRecord.of(row, item.adapter_id)

    def record(self, completions: Iterable[CompletionToRecord]) -> None:
        with self.db.transaction(routing_change=False) as session:
            for c in completions:
                adapter = adapter_row(c.adapter_id, session=session)
                session.add(RecordedCompletion(
                    completion_id=c.completion_id, choice=c.choice, tenant_id=adapter.tenant_id,
                    adapter_id=adapter.id, version=c.version, prompt=c.prompt, output=c.output))

    def recorded(self, tenant: str | None, completion_id: str,
                 choice: int) -> RecordedCompletionRecord:
        """A recorded completion; another tenant's looks exactly like a missing one."""
        with self.db.reading() as session:
            row = session.get(RecordedCompletion, (completion_id, choice))
            adapter_id = adapter_row_id_to_name(row.adapter_id, session=session) if row else None
        if row is None or (tenant is not None and _tenant_of(adapter_id) != tenant):
            raise NotFound(f"No recorded completion '{completion_id[:100]}' (choice {choice}). "
                           "Completions are kept only for adapters whose policy records them.")
        return RecordedCompletionRecord(adapter_id, row.version, dict(row.prompt), row.output)

    def stats(self, adapter_id: str) -> FeedbackStats:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.execute(
                select(Feedback.kind, Feedback.status, Feedback.version, func.count())
                .where(Feedback.adapter_id == adapter.id)
                .group_by(Feedback.kind, Feedback.status, Feedback.version)
            ).all()
        by_kind, by_status, by_version = Counter(), Counter(), Counter()
        for kind, status, version, count in rows:
            by_kind[kind] += count
            by_status[status] += count
            by_version[str(version) if version is not None else "unknown"] += count
        return FeedbackStats(adapter_id, sum(by_kind.values()), dict(by_kind), dict(by_status),
                             dict(by_version))


def adapter_row_id_to_name(adapter_row_id: int, *, session: Session) -> str:
    tenant, name = session.execute(
        select(Tenant.name, Adapter.name).join(Adapter).where(Adapter.id == adapter_row_id)
    ).one()
    return f"{tenant}/{name}"
