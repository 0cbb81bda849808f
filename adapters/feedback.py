"""Feedback storage: preference pairs and scores, recorded completions, and their counts.

A feedback row is committed before the client hears "created". A client that retries with the
same Idempotency-Key gets the first result back and nothing new is stored; the same key with
a different body is a conflict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .db import Database
from .errors import NotFound
from .feedback_writes import (
    AdapterIds,
    FeedbackRecord,
    NewFeedback,
    Outcome,
    Submission,
    write_group,
)
from .prompts import StoredPrompt
from .rows import adapter_row, adapter_row_id_to_name
from .schema import Feedback, RecordedCompletion


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

    def submit(self, item: NewFeedback, *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> tuple[FeedbackRecord, bool]:
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
                session.add(RecordedCompletion(
                    completion_id=c.completion_id, choice=c.choice, tenant_id=adapter.tenant_id,
                    adapter_id=adapter.id, version=c.version, prompt=c.prompt.to_json(),
                    output=c.output))

    def recorded(self, tenant: str | None, completion_id: str,
                 choice: int) -> RecordedCompletionRecord:
        """A recorded completion; another tenant's looks exactly like a missing one."""
        with self.db.reading() as session:
            row = session.get(RecordedCompletion, (completion_id, choice))
            adapter_id = adapter_row_id_to_name(row.adapter_id, session=session) if row else None
        if row is None or (tenant is not None and _tenant_of(adapter_id) != tenant):
            raise NotFound(f"No recorded completion '{completion_id[:100]}' (choice {choice}). "
                           "Completions are kept only for adapters whose policy records them.")
        return RecordedCompletionRecord(adapter_id, row.version,
                                        StoredPrompt.from_json(row.prompt), row.output)

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


