"""Shadow answers: during a rollout, the version that did not serve a finished request
answers the same prompt token ids with the same sampling settings, out of band, and the
pair of answers goes to the registry for the rollout's judge.

Users never wait for a shadow and never see one. Jobs arrive only after a user's stream
ended; they queue in a bounded queue and are answered a few at a time in the background,
without passing the admission gate, tenant limits or token budgets, since no client asked
for them. Under load they are the first thing given up: a full queue drops new jobs, and a
job whose turn comes while the engine is busy is dropped rather than run. A job whose
rollout has left the step it was queued in is dropped too (counted), since its pair would be
evidence for a step no longer decided. A failure is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from prometheus_client import Counter

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollouts.book import RolloutRecord, ShadowPair

from ..engine.interface import AdapterRef, Engine, SamplingSpec
from ..settings import ShadowSettings
from ..warmup import AdapterWarmer
from .shadow_pairs import ShadowPairWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """A finished request, to be answered again by the rollout's other version."""

    rollout: RolloutRecord  # as routed when the request was served
    served_version: int
    served_answer: str
    other: AdapterRef  # the version that answers now
    prompt: StoredPrompt  # as feedback would name it
    prompt_ids: tuple[int, ...]
    sampling: SamplingSpec
    cache_salt: str  # the requesting tenant's prefix-cache partition

    def pair(self, other_answer: str) -> ShadowPair:
        answers = (self.served_answer, other_answer)
        if self.served_version != self.rollout.candidate:
            answers = answers[::-1]
        return ShadowPair(
            self.rollout.id,
            self.rollout.step,
            self.served_version,
            self.prompt,
            candidate_answer=answers[0],
            baseline_answer=answers[1],
        )


class ShadowRunner:
    def __init__(
        self,
        engine: Engine,
        warmer: AdapterWarmer,
        writer: ShadowPairWriter,
        results: Counter,
        settings: ShadowSettings,
        current: Callable[[str], RolloutRecord | None],
    ) -> None:
        """`current`: an adapter's unfinished rollout as the server routes it now."""
        self.engine, self.warmer, self.writer, self.current = engine, warmer, writer, current
        self.results = results  # labelled by adapter and result
        self.settings = settings
        self._jobs: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=settings.queue_size)

    def submit(self, job: ShadowJob) -> None:
        """Queue the job, or drop it if the queue is full; never waits, never raises."""
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self._count(job, "dropped_full")

    async def run(self) -> None:
        """Answer queued jobs, `concurrency` at a time, until cancelled."""
        await asyncio.gather(*(self._work() for _ in range(self.settings.concurrency)))

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            await self._answer(job)

    async def _answer(self, job: ShadowJob) -> None:
        if self.engine.active_requests > self.settings.max_active_requests:
            self._count(job, "dropped_busy")
            return
        now = self.current(job.rollout.adapter_id)
        if now is None or (now.id, now.step) != (job.rollout.id, job.rollout.step):
            self._count(job, "dropped_stale")
            return
        try:
            text = await self._generate(job)
        except Exception:
            logger.warning("the shadow answer of %s failed", job.other.served_name, exc_info=True)
            self._count(job, "failed")
            return
        self.writer.add(job.pair(text))
        self._count(job, "answered")

    async def _generate(self, job: ShadowJob) -> str:
        await self.warmer.ensure_loaded(job.other)
        # Logprobs change nothing in what is sampled, and the judge reads only text.
        sampling = replace(job.sampling, logprobs=None)
        stream = self.engine.generate(
            list(job.prompt_ids), sampling, job.other, f"shadow-{uuid.uuid4().hex}", job.cache_salt
        )
        async with aclosing(stream):
            return "".join([delta.text async for delta in stream])

    def _count(self, job: ShadowJob, result: str) -> None:
        self.results.labels(job.rollout.adapter_id, result).inc()
