"""The logic behind /v1/chat/completions and /v1/completions.

Resolve the model to an adapter version, turn the request into the engine's inputs
(engine_inputs.py) and plan what its answers may be (answer_plan.py), admit the request,
make sure its adapter is loaded, and start one engine request per choice. Errors found
before the first token come back as HTTP errors; the first token is awaited here for that
reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from loraloop.adapters.feedback import CompletionToRecord, FeedbackBook
from loraloop.adapters.prompts import StoredPrompt

from ..admission import AdmissionGate
from ..engine.interface import (
    AdapterRef,
    Engine,
    FinishReason,
    GenerationDelta,
    SamplingSpec,
    TokenLogprob,
)
from ..errors import EngineUnavailable
from ..metrics import ServeMetrics
from ..rollouts.traffic import RolloutTraffic, ShadowSource
from ..routing import CurrentRoutes
from ..streams import merge_indexed, prepend, releasing
from ..token_budget import TokenBudget
from ..warmup import AdapterWarmer
from .answer_check import AnswerCheck
from .answer_plan import AnswerPlanner
from .engine_inputs import EngineInputs, per_choice
from .protocol import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:  # vLLM's parsers load only where an operator names a tool-call format
    from .tool_calls import ToolCallReader

logger = logging.getLogger(__name__)
# Completion id prefix -> the endpoint, as metrics name it.
ENDPOINTS = {"chatcmpl": "/v1/chat/completions", "cmpl": "/v1/completions"}


@dataclass
class Generation:
    id: str
    created: int
    model: str  # what served it: the base model's name or "tenant/name@version"
    adapter: AdapterRef | None
    prompt_tokens: int
    choices: int
    events: AsyncGenerator[tuple[int, GenerationDelta], None]
    # Chat requests that may call tools: a new reader per choice turns its text into calls.
    tool_reader: Callable[[], ToolCallReader] | None = None
    # Structured requests: what each finished answer must satisfy before it is sent.
    check: AnswerCheck | None = None


@dataclass
class ChoiceResult:
    text: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


async def collect(generation: Generation) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in range(generation.choices)]
    async for index, delta in generation.events:
        result = results[index]
        result.text += delta.text
        result.completion_tokens += len(delta.token_ids)
        result.logprobs.extend(delta.logprobs or ())
        result.finish_reason = delta.finish_reason or result.finish_reason
    return results


class CacheSalts:
    """The engine's prefix-cache partition per caller: one per tenant (operators share one),
    derived server-side from a per-process key, so no client can choose or guess another's."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def of(self, tenant: str | None) -> str:
        return hmac.new(self._key, (tenant or "").encode(), hashlib.sha256).hexdigest()


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        inputs: EngineInputs,
        answers: AnswerPlanner,
        warmer: AdapterWarmer,
        admission: AdmissionGate,
        routes: CurrentRoutes,
        feedback: FeedbackBook,
        metrics: ServeMetrics,
        rollouts: RolloutTraffic | None = None,
    ) -> None:
        self.engine, self.inputs, self.answers = engine, inputs, answers
        self.warmer, self.admission, self.routes = warmer, admission, routes
        self.feedback, self.metrics = feedback, metrics
        self.rollouts = rollouts  # counts and shadows requests of rollouts' versions
        self.ready = False
        self.cache_salts = CacheSalts()

    async def chat(self, request: ChatCompletionRequest, tenant: str | None) -> Generation:
        """`tenant`: whose adapters the caller may use; None for every tenant's."""
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        inputs = self.inputs
        inputs.check_messages(request)
        tools = self.answers.tools(request)  # first: a tool schema's own limits name `tools`
        stored = inputs.chat_prompt(request)
        top = inputs.top_logprobs(request.top_logprobs or 0, "top_logprobs")
        sampling = inputs.sampling(request, logprobs=top if request.logprobs else None)
        if tools is not None:  # its grammar covers response_format too
            sampling = replace(
                sampling,
                constraint=tools.constraint or sampling.constraint,
                skip_special_tokens=tools.skip_special_tokens,
            )
        prompt = inputs.render(stored)
        sampling = inputs.fit(sampling, request, prompt, "messages")
        await self.answers.check_grammar(sampling.constraint, tenant)
        generation = await self._start(
            "chatcmpl", adapter, [(prompt, sampling)], request.n, tenant, [stored]
        )
        if tools is not None:
            generation.tool_reader = lambda: tools.reader(prompt)
        generation.check = self.answers.check(request, tools=tools is not None)
        return generation

    async def complete(self, request: CompletionRequest, tenant: str | None) -> Generation:
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        inputs, logprobs = self.inputs, None
        if request.logprobs is not None:
            logprobs = inputs.top_logprobs(request.logprobs, "logprobs")
        sampling = inputs.sampling(request, logprobs=logprobs)
        token_lists = inputs.completion_prompts(request.prompt)
        prompts = [(ids, inputs.fit(sampling, request, ids, "prompt")) for ids in token_lists]
        await self.answers.check_grammar(sampling.constraint, tenant)
        stored = None
        if self._records(adapter) or self.routes.snapshot.rollout_of(adapter):
            stored = inputs.stored_texts(token_lists)
        generation = await self._start("cmpl", adapter, prompts, request.n, tenant, stored)
        generation.check = self.answers.check(request, tools=False)
        return generation

    def _records(self, adapter: AdapterRef | None) -> bool:
        return adapter is not None and adapter.adapter_id in self.routes.snapshot.recording

    async def _start(
        self,
        prefix: str,
        adapter: AdapterRef | None,
        prompts: list[tuple[list[int], SamplingSpec]],
        n: int,
        tenant: str | None,
        stored: list[StoredPrompt] | None = None,
    ) -> Generation:
        """`stored`: each prompt as feedback names it, kept with the completions of adapters
        that record them and paired with shadow answers during a rollout."""
        if not self.ready:
            raise EngineUnavailable("The model is still loading; retry shortly.")
        generation_id = f"{prefix}-{uuid.uuid4().hex}"
        started = time.perf_counter()
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        records = stored if self._records(adapter) else None
        ticket = self.admission.admit(tenant)
        served = self.rollouts.serve(adapter, self.routes.snapshot) if self.rollouts else None
        cache_salt = self.cache_salts.of(tenant)
        try:
            if adapter is not None:
                await self.warmer.ensure_loaded(adapter)
            streams = [
                self.engine.generate(
                    ids,
                    per_choice(spec, sample),
                    adapter,
                    f"{generation_id}-{p * n + sample}",
                    cache_salt,
                )
                for p, (ids, spec) in enumerate(prompts)
                for sample in range(n)
            ]
            events = merge_indexed(streams)
            if records is not None and adapter is not None:  # only adapters record
                events = self._recording(events, generation_id, adapter, records, n)
            events = self.metrics.observe_generation(
                events,
                endpoint=ENDPOINTS[prefix],
                choices=len(streams),
                started=started,
                adapter=adapter.adapter_id if adapter else self.routes.snapshot.base_model,
                version=adapter.version if adapter else None,
                prompt_tokens=prompt_tokens,
            )
            if tenant is not None and self.admission.budget is not None:
                events = _charged(events, self.admission.budget, tenant)
            events = releasing(events, ticket.release)
            if served is not None:  # outermost: a shadow is queued once all else is done
                events = served.watch(
                    events,
                    choices=len(streams),
                    shadow=ShadowSource.of(prompts, n, stored, cache_salt),
                )
            first = await anext(events)
        except BaseException as error:
            ticket.release()
            if served is not None:
                served.failed(error)
            raise
        return Generation(
            id=generation_id,
            created=int(time.time()),
            model=adapter.served_name if adapter else self.routes.snapshot.base_model,
            adapter=adapter,
            prompt_tokens=prompt_tokens,
            choices=len(prompts) * n,
            events=prepend(first, events),
        )

    async def _recording(
        self,
        events: AsyncGenerator[tuple[int, GenerationDelta], None],
        generation_id: str,
        adapter: AdapterRef,
        records: list[StoredPrompt],
        n: int,
    ) -> AsyncGenerator[tuple[int, GenerationDelta], None]:
        """Pass the events through; once all are out, keep each choice's prompt and output so
        that score feedback can name the completion by its id."""
        outputs: dict[int, str] = defaultdict(str)
        async for index, delta in events:
            outputs[index] += delta.text
            yield index, delta
        rows = [
            CompletionToRecord(
                generation_id, index, adapter.adapter_id, adapter.version, records[index // n], text
            )
            for index, text in sorted(outputs.items())
        ]
        try:
            await asyncio.to_thread(self.feedback.record, rows)
        except Exception:  # the answer matters more than its record: serve it regardless
            logger.exception("could not record completion %s", generation_id)


async def _charged(
    events: AsyncGenerator[tuple[int, GenerationDelta], None], budget: TokenBudget, tenant: str
) -> AsyncGenerator[tuple[int, GenerationDelta], None]:
    """Take what the request generated out of its tenant's budget, however it ends."""
    tokens = 0
    try:
        async for event in events:
            tokens += len(event[1].token_ids)
            yield event
    finally:
        budget.spend(tenant, tokens)
