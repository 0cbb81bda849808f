"""The logic behind /v1/feedback: check who may say what about which adapter, then store it.

The adapter must be one the caller may use (another tenant's looks missing: 404). A score may
name a completion this server recorded instead of repeating the prompt and the answer. Rows
are stored by the server's one writer (writer.py), many requests to a commit; each is
committed before its caller hears "created".
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from loraloop.adapters.feedback import (
    FeedbackBook,
    FeedbackRecord,
    NewFeedback,
    Outcome,
    Submission,
)
from loraloop.adapters.prompts import StoredPrompt

from ..metrics import ServeMetrics
from ..routing import RoutingTable
from .protocol import FeedbackPublic, FeedbackRequest, FeedbackStatsPublic
from .writer import FeedbackWriter


def request_hash(body: FeedbackRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def public(record: FeedbackRecord) -> FeedbackPublic:
    return FeedbackPublic(id=record.id, adapter=record.adapter_id, version=record.version,
                          kind=record.kind, status=record.status, created_at=record.created_at)


class FeedbackService:
    def __init__(self, book: FeedbackBook, routes: RoutingTable, metrics: ServeMetrics) -> None:
        self.book, self.routes, self.metrics = book, routes, metrics
        self.writer = FeedbackWriter(book)

    def adapter_for(self, model: str, tenant: str | None) -> tuple[str, int | None]:
        """(adapter id, version or None) for an adapter the caller may give feedback on."""
        return self.routes.snapshot.registered(model, tenant)

    async def _new_feedback(self, body: FeedbackRequest, tenant: str | None) -> NewFeedback:
        if body.completion_id is not None:
            recorded = await asyncio.to_thread(self.book.recorded, tenant, body.completion_id,
                                               body.choice)
            return NewFeedback(recorded.adapter_id, recorded.version, "score", recorded.prompt,
                               completion=recorded.output, score=body.score, judge=body.judge,
                               rationale=body.rationale, completion_id=body.completion_id)
        adapter_id, version = self.adapter_for(body.adapter, tenant)
        prompt = (StoredPrompt(text=body.prompt) if body.prompt is not None
                  else StoredPrompt.chat((m.role, m.text()) for m in body.messages))
        return NewFeedback(adapter_id, version, body.kind, prompt, chosen=body.chosen,
                           rejected=body.rejected, completion=body.completion, score=body.score,
                           judge=body.judge, rationale=body.rationale)

    async def prepare(self, body: FeedbackRequest, tenant: str | None,
                      idempotency_key: str | None) -> Submission:
        """What to store for a request; raises what refuses it before any write."""
        item = await self._new_feedback(body, tenant)
        return Submission(item, idempotency_key,
                          request_hash(body) if idempotency_key else None)

    async def store(self, submissions: list[Submission]) -> list[Outcome]:
        """Outcomes in order, once committed (see writer.py)."""
        outcomes = await self.writer.write(submissions)
        for outcome in outcomes:
            if not isinstance(outcome, Exception) and not outcome[1]:
                self.metrics.feedback.labels(outcome[0].kind).inc()
        return outcomes

    async def submit(self, body: FeedbackRequest, tenant: str | None,
                     idempotency_key: str | None) -> tuple[FeedbackPublic, bool]:
        """Store it; True when this was a retry answered with the first result."""
        outcome = (await self.store([await self.prepare(body, tenant, idempotency_key)]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        record, replayed = outcome
        return public(record), replayed

    async def stats(self, model: str, tenant: str | None) -> FeedbackStatsPublic:
        adapter_id, _ = self.adapter_for(model, tenant)
        stats = await asyncio.to_thread(self.book.stats, adapter_id)
        return FeedbackStatsPublic(adapter=stats.adapter_id, total=stats.total,
                                   by_kind=stats.by_kind, by_status=stats.by_status,
                                   by_version=stats.by_version)
