"""The logic behind /v1/feedback: check who may say what about which adapter, then store it.

The adapter must be one the caller may use (another tenant's looks missing: 404). A score may
name a completion this server recorded instead of repeating the prompt and the answer.

Storing is a group commit: requests queue their submissions and wait; one writer takes
everything queued, stores it in one transaction on its own thread, then hands each request
its own outcomes. While one group commits the next one gathers, so under load a commit (and
its fsync) is shared by many requests, and when idle a lone request is stored at once.
Nothing is acknowledged before the transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.feedback import (
    FeedbackBook,
    NewFeedback,
    Outcome,
    Submission,
)
from loraloop.adapters.prompts import StoredPrompt

from ..chat import stored_prompt
from ..metrics import ServeMetrics
from ..routing import CurrentRoutes
from .protocol import FeedbackPublic, FeedbackRequest, FeedbackStatsPublic

logger = logging.getLogger(__name__)
# Rows per transaction: large enough that a full batch is one commit, small enough that one
# group never holds the database's write lock for long.
MAX_GROUP_ROWS = 2000

_Waiting = tuple[Sequence[Submission], asyncio.Future]


class FeedbackWriter:
    def __init__(self, book: FeedbackBook, max_group_rows: int = MAX_GROUP_ROWS) -> None:
        self.book, self.max_group_rows = book, max_group_rows
        self._queue: asyncio.Queue[_Waiting | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        # One thread: one writer per server, and its database connection stays on it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-writer")

    async def write(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """Outcomes in order, once the group holding these submissions has committed."""
        if self._task is None:  # started by the first request, on the server's event loop
            self._task = asyncio.create_task(self._run(), name="feedback-writer")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((submissions, future))
        return await future

    async def close(self) -> None:
        """Store what is still queued, then stop."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            # One turn of the event loop first: requests already read and being checked
            # join this group instead of waiting for the next commit.
            await asyncio.sleep(0)
            group, rows, stop = [first], len(first[0]), False
            while rows < self.max_group_rows and not self._queue.empty():
                waiting = self._queue.get_nowait()
                if waiting is None:
                    stop = True
                    break
                group.append(waiting)
                rows += len(waiting[0])
            await self._store(group)
            if stop:
                return

    async def _store(self, group: list[_Waiting]) -> None:
        submissions = [s for waiting, _ in group for s in waiting]
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._thread, self.book.submit_many, submissions)
        except Exception as exc:  # the group did not commit: every request in it fails
            if isinstance(exc, RegistryUnavailable):  # said once by the registry watcher
                logger.warning("storing %d feedback rows: %s", len(submissions), exc.message)
            else:
                logger.error("storing %d feedback rows failed", len(submissions), exc_info=exc)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for waiting, future in group:
            if not future.done():  # a request whose client went away needs no answer
                future.set_result(outcomes[start : start + len(waiting)])
            start += len(waiting)


def request_hash(body: FeedbackRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class FeedbackService:
    def __init__(self, book: FeedbackBook, routes: CurrentRoutes, metrics: ServeMetrics) -> None:
        self.book, self.routes, self.metrics = book, routes, metrics
        self.writer = FeedbackWriter(book)

    def adapter_for(self, model: str, tenant: str | None) -> tuple[str, int | None]:
        """(adapter id, version or None) for an adapter the caller may give feedback on."""
        return self.routes.snapshot.registered(model, tenant)

    async def _new_feedback(self, body: FeedbackRequest, tenant: str | None) -> NewFeedback:
        if body.completion_id is not None:
            recorded = await asyncio.to_thread(
                self.book.recorded, tenant, body.completion_id, body.choice
            )
            return NewFeedback(
                recorded.adapter_id,
                recorded.version,
                "score",
                recorded.prompt,
                completion=recorded.output,
                score=body.score,
                judge=body.judge,
                rationale=body.rationale,
                completion_id=body.completion_id,
            )
        # FeedbackRequest's validator: without completion_id, an adapter and a prompt or messages.
        assert body.adapter is not None
        adapter_id, version = self.adapter_for(body.adapter, tenant)
        if body.prompt is not None:
            prompt = StoredPrompt(text=body.prompt)
        else:
            assert body.messages is not None
            prompt = stored_prompt(body.messages, body.tools)
        return NewFeedback(
            adapter_id,
            version,
            body.kind,
            prompt,
            chosen=body.chosen,
            rejected=body.rejected,
            completion=body.completion,
            score=body.score,
            judge=body.judge,
            rationale=body.rationale,
        )

    async def prepare(
        self, body: FeedbackRequest, tenant: str | None, idempotency_key: str | None
    ) -> Submission:
        """What to store for a request; raises what refuses it before any write."""
        item = await self._new_feedback(body, tenant)
        return Submission(item, idempotency_key, request_hash(body) if idempotency_key else None)

    async def store(self, submissions: list[Submission]) -> list[Outcome]:
        """Outcomes in order, once committed (see writer.py)."""
        outcomes = await self.writer.write(submissions)
        for outcome in outcomes:
            if not isinstance(outcome, Exception) and not outcome[1]:
                self.metrics.feedback.labels(outcome[0].kind).inc()
        return outcomes

    async def submit(
        self, body: FeedbackRequest, tenant: str | None, idempotency_key: str | None
    ) -> tuple[FeedbackPublic, bool]:
        """Store it; True when this was a retry answered with the first result."""
        outcome = (await self.store([await self.prepare(body, tenant, idempotency_key)]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        record, replayed = outcome
        return FeedbackPublic.model_validate(record), replayed

    async def stats(self, model: str, tenant: str | None) -> FeedbackStatsPublic:
        adapter_id, _ = self.adapter_for(model, tenant)
        stats = await asyncio.to_thread(self.book.stats, adapter_id)
        return FeedbackStatsPublic.model_validate(stats)
