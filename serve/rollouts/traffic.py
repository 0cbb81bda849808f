"""Requests that a version of an unfinished rollout serves (its candidate or its baseline):
each is counted for the rollout's guards, per step and version (requests, errors, empty
answers, time per output token), and a sample of those that finish goes to the shadow
runner, for the other version to answer too.

Nothing here can fail or slow a request: counting is a dict update, and a shadow is only
queued, once the request's stream has ended.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from time import perf_counter

from prometheus_client import Counter

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollouts.book import RolloutRecord
from loraloop.adapters.rollouts.counts import EMPTY, ERRORS, REQUESTS, tpot_bucket

from ..engine.interface import AdapterRef, GenerationDelta, SamplingSpec
from ..errors import LoraloopError
from ..routing import RoutingSnapshot
from .counts import RolloutCountRecorder
from .shadow import ShadowJob, ShadowRunner

Events = AsyncGenerator[tuple[int, GenerationDelta], None]


@dataclass(frozen=True)
class ShadowSource:
    """What a shadow needs of a request besides its answer."""

    prompt: StoredPrompt
    prompt_ids: tuple[int, ...]
    sampling: SamplingSpec
    cache_salt: str

    @classmethod
    def of(
        cls,
        prompts: list[tuple[list[int], SamplingSpec]],
        n: int,
        stored: list[StoredPrompt] | None,
        cache_salt: str,
    ) -> ShadowSource | None:
        """Only a request of one prompt and one choice has an answer to pair."""
        if len(prompts) != 1 or n != 1 or not stored:
            return None
        ((ids, sampling),) = prompts
        return cls(stored[0], tuple(ids), sampling, cache_salt)


class RolloutTraffic:
    def __init__(
        self,
        counts: RolloutCountRecorder,
        shadows: ShadowRunner,
        requests: Counter,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.counts, self.shadows, self.draw = counts, shadows, draw
        self.requests = requests  # labelled by adapter, version and stage

    def serve(self, adapter: AdapterRef | None, snapshot: RoutingSnapshot) -> ServedRequest | None:
        """Count an admitted request; None when `adapter` is no rollout's version."""
        rollout = snapshot.rollout_of(adapter)
        if adapter is None or rollout is None:
            return None
        self.counts.add(rollout, adapter.version, REQUESTS)
        self.requests.labels(adapter.adapter_id, str(adapter.version), rollout.stage).inc()
        other = rollout.baseline if adapter.version == rollout.candidate else rollout.candidate
        return ServedRequest(
            self, rollout, adapter, snapshot.versions.get((adapter.adapter_id, other))
        )


@dataclass
class _Output:
    """What a request's stream produced, as it went."""

    texts: defaultdict[int, str] = field(default_factory=lambda: defaultdict(str))
    tokens: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def add(self, index: int, delta: GenerationDelta) -> None:
        self.last_at = perf_counter()
        self.first_at = self.first_at or self.last_at
        self.texts[index] += delta.text
        self.tokens += len(delta.token_ids)


class ServedRequest:
    """One request served by a rollout's version; its outcome is counted once."""

    def __init__(
        self,
        traffic: RolloutTraffic,
        rollout: RolloutRecord,
        adapter: AdapterRef,
        other: AdapterRef | None,
    ) -> None:
        self.traffic, self.rollout, self.adapter, self.other = traffic, rollout, adapter, other
        self._ended = False

    def failed(self, error: BaseException) -> None:
        """The request failed, before its stream began or during it. Neither a client that
        left (a cancellation) nor a refusal of what it asked for (a 4xx) is the version's
        fault, and neither is counted."""
        if self._ended:
            return
        self._ended = True
        refused = isinstance(error, LoraloopError) and error.status_code < 500
        if isinstance(error, Exception) and not refused:
            self.traffic.counts.add(self.rollout, self.adapter.version, ERRORS)

    async def watch(self, events: Events, *, choices: int, shadow: ShadowSource | None) -> Events:
        """Pass the events through; once all are out, count the answer and maybe queue its
        shadow. A request whose client left early stays counted as a request only: its
        answer is incomplete."""
        output = _Output()
        try:
            async with aclosing(events):
                async for index, delta in events:
                    output.add(index, delta)
                    yield index, delta
        except Exception as error:
            self.failed(error)
            raise
        self._ended = True
        self._count(output, choices)
        if (
            shadow is not None
            and self.other is not None
            and (self.traffic.draw() * 100 < self.rollout.plan.shadow_percent)
        ):
            self.traffic.shadows.submit(
                ShadowJob(
                    self.rollout,
                    self.adapter.version,
                    output.texts[0],
                    self.other,
                    shadow.prompt,
                    shadow.prompt_ids,
                    shadow.sampling,
                    shadow.cache_salt,
                )
            )

    def _count(self, output: _Output, choices: int) -> None:
        counts, version = self.traffic.counts, self.adapter.version
        if all(not output.texts[index].strip() for index in range(choices)):
            counts.add(self.rollout, version, EMPTY)
        per_choice = output.tokens / max(choices, 1)
        if output.first_at is not None and output.last_at is not None and per_choice >= 2:
            ms = (output.last_at - output.first_at) * 1000 / (per_choice - 1)
            counts.add(self.rollout, version, tpot_bucket(ms))
