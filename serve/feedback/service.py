"""The logic behind /v1/feedback: check who may say what about which adapter, then store it.

The adapter must be one the caller may use (another tenant's looks missing: 404). A score may
name a completion this server recorded instead of repeating the prompt and the answer. The
row is committed before the caller hears "created".
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from loraloop.adapters.feedback import FeedbackBook, FeedbackRecord, NewFeedback

from ..metrics import ServeMetrics
from ..routing import RoutingTable
from .protocol import FeedbackPublic, FeedbackRequest


def chat_prompt(messages) -> dict:
    # Stored as the server renders it: developer messages act as system messages.
    return {"messages": [{"role": "system" if m.role == "developer" else m.role,
                          "content": m.text()} for m in messages]}


def request_hash(body: FeedbackRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def public(record: FeedbackRecord) -> FeedbackPublic:
    return FeedbackPublic(id=record.id, adapter=record.adapter_id, version=record.version,
                          kind=record.kind, status=record.status, created_at=record.created_at)


class FeedbackService:
    def __init__(self, book: FeedbackBook, routes: RoutingTable, metrics: ServeMetrics) -> None:
        self.book, self.routes, self.metrics = book, routes, metrics

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
        prompt = {"text": body.prompt} if body.prompt is not None else chat_prompt(body.messages)
        return NewFeedback(adapter_id, version, body.kind, prompt, chosen=body.chosen,
                           rejected=body.rejected, completion=body.completion, score=body.score,
                           judge=body.judge, rationale=body.rationale)

    async def submit(self, body: FeedbackRequest, tenant: str | None,
                     idempotency_key: str | None) -> tuple[FeedbackPublic, bool]:
        """Store it; True when this was a retry answered with the first result."""
        item = await self._new_feedback(body, tenant)
        record, replayed = await asyncio.to_thread(
            self.book.submit, item, idempotency_key=idempotency_key,
            request_hash=request_hash(body) if idempotency_key else None)
        if not replayed:
            self.metrics.feedback.labels(record.kind).inc()
        return public(record), replayed
