"""The logic behind /v1/chat/completions and /v1/completions.

Resolve the model to an adapter version, check the request against the configured bounds,
render the prompt to token ids, admit the request, make sure its adapter is loaded, and
start one engine request per choice. Errors found before the first token come back as HTTP
errors; the first token is awaited here for that reason.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from loraloop.adapters.feedback import CompletionToRecord, FeedbackBook
from loraloop.adapters.prompts import PromptRenderer, StoredPrompt

from ..admission import AdmissionGate
from ..engine.protocol import AdapterRef, Engine, GenerationDelta, SamplingSpec, TokenLogprob
from ..errors import EngineUnavailable, InvalidRequest
from ..metrics import ServeMetrics
from ..routing import CurrentRoutes
from ..settings import RequestLimits
from ..streams import merge_indexed, prepend, releasing
from ..token_budget import TokenBudget
from ..warmup import AdapterWarmer
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

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
    events: AsyncIterator[tuple[int, GenerationDelta]]


@dataclass
class ChoiceResult:
    text: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


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
        renderer: PromptRenderer,
        warmer: AdapterWarmer,
        admission: AdmissionGate,
        limits: RequestLimits,
        routes: CurrentRoutes,
        feedback: FeedbackBook,
        metrics: ServeMetrics,
    ) -> None:
        self.engine, self.renderer, self.warmer = engine, renderer, warmer
        self.admission, self.limits, self.routes = admission, limits, routes
        self.feedback, self.metrics = feedback, metrics
        self.ready = False
        self.cache_salts = CacheSalts()

    async def chat(self, request: ChatCompletionRequest, tenant: str | None) -> Generation:
        """`tenant`: whose adapters the caller may use; None for every tenant's."""
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        self._check_sampling(request)
        if len(request.messages) > self.limits.max_messages:
            raise InvalidRequest(
                f"At most {self.limits.max_messages} messages per request.", param="messages"
            )
        stored = StoredPrompt.chat((m.role, m.text()) for m in request.messages)
        self._check_prompt_chars(sum(len(content) for _, content in stored.messages),
                                 "messages")
        top = self._check_logprobs(request.top_logprobs or 0, "top_logprobs")
        prompt = self.renderer.render(stored)
        sampling = self._sampling(request, prompt, "messages",
                                  logprobs=top if request.logprobs else None)
        records = [stored] if self._records(adapter) else None
        return await self._start("chatcmpl", adapter, [(prompt, sampling)], request.n, tenant,
                                 records)

    async def complete(self, request: CompletionRequest, tenant: str | None) -> Generation:
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        self._check_sampling(request)
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._check_logprobs(request.logprobs, "logprobs")
        token_lists = self._completion_prompts(request.prompt)
        prompts = [(ids, self._sampling(request, ids, "prompt", logprobs=logprobs))
                   for ids in token_lists]
        records = None
        if self._records(adapter):
            records = [StoredPrompt(text=self.renderer.tokenizer.decode(ids))
                       for ids in token_lists]
        return await self._start("cmpl", adapter, prompts, request.n, tenant, records)

    def _records(self, adapter: AdapterRef | None) -> bool:
        return adapter is not None and adapter.adapter_id in self.routes.snapshot.recording

    def _completion_prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt or len(prompt) > self.limits.max_prompts:
            raise InvalidRequest(
                f"Send between 1 and {self.limits.max_prompts} prompts.", param="prompt"
            )
        texts = [p for p in prompt if isinstance(p, str)]
        self._check_prompt_chars(sum(map(len, texts)), "prompt")
        renderer = self.renderer
        token_lists = [
            renderer.text(p) if isinstance(p, str) else renderer.check_token_ids(p, "prompt")
            for p in prompt
        ]
        if any(not ids for ids in token_lists):
            raise InvalidRequest("A prompt must not be empty.", param="prompt")
        return token_lists

    def _check_sampling(self, request: SamplingFields) -> None:
        limits, max_tokens = self.limits, request.requested_max_tokens
        if request.n > limits.max_n:
            raise InvalidRequest(f"n must be at most {limits.max_n}.", param="n")
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise InvalidRequest(
                f"{request.max_tokens_param} must be at most {limits.max_tokens}.",
                param=request.max_tokens_param,
            )
        stop = request.stop_sequences()
        if len(stop) > limits.max_stop or any(
            not 0 < len(s) <= limits.max_stop_chars for s in stop
        ):
            raise InvalidRequest(
                f"Up to {limits.max_stop} stop sequences of 1 to {limits.max_stop_chars} "
                "characters each.",
                param="stop",
            )

    def _check_logprobs(self, requested: int, param: str) -> int:
        if requested > self.limits.max_top_logprobs:
            raise InvalidRequest(
                f"{param} must be at most {self.limits.max_top_logprobs}.", param=param
            )
        return requested

    def _check_prompt_chars(self, chars: int, param: str) -> None:
        if chars > self.limits.max_prompt_chars:
            raise InvalidRequest(
                f"The prompt has {chars} characters; the limit is "
                f"{self.limits.max_prompt_chars}.",
                param=param,
            )

    def _sampling(self, request: SamplingFields, prompt: list[int], prompt_param: str, *,
                  logprobs: int | None) -> SamplingSpec:
        return SamplingSpec(
            max_tokens=self.renderer.max_tokens_for(
                len(prompt), request.requested_max_tokens, self.limits.default_max_tokens,
                prompt_param=prompt_param, max_tokens_param=request.max_tokens_param,
            ),
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=request.stop_sequences(),
            logprobs=logprobs,
        )

    async def _start(self, prefix: str, adapter: AdapterRef | None,
                     prompts: list[tuple[list[int], SamplingSpec]], n: int, tenant: str | None,
                     records: list[StoredPrompt] | None = None) -> Generation:
        """`records`: each prompt as feedback will name it, when completions are kept."""
        if not self.ready:
            raise EngineUnavailable("The model is still loading; retry shortly.")
        generation_id = f"{prefix}-{uuid.uuid4().hex}"
        started = time.perf_counter()
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        ticket = self.admission.admit(tenant)
        cache_salt = self.cache_salts.of(tenant)
        try:
            if adapter is not None:
                await self.warmer.ensure_loaded(adapter)
            streams = [
                self.engine.generate(ids, _choice_sampling(spec, sample), adapter,
                                     f"{generation_id}-{p * n + sample}", cache_salt)
                for p, (ids, spec) in enumerate(prompts)
                for sample in range(n)
            ]
            events = merge_indexed(streams)
            if records is not None:
                events = self._recording(events, generation_id, adapter, records, n)
            events = self.metrics.observe_generation(
                events, endpoint=ENDPOINTS[prefix], choices=len(streams), started=started,
                adapter=adapter.adapter_id if adapter else self.routes.snapshot.base_model,
                prompt_tokens=prompt_tokens)
            if tenant is not None and self.admission.budget is not None:
                events = _charged(events, self.admission.budget, tenant)
            events = releasing(events, ticket.release)
            first = await anext(events)
        except BaseException:
            ticket.release()
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


    async def _recording(self, events: AsyncIterator[tuple[int, GenerationDelta]],
                         generation_id: str, adapter: AdapterRef, records: list[StoredPrompt],
                         n: int) -> AsyncIterator[tuple[int, GenerationDelta]]:
        """Pass the events through; once all are out, keep each choice's prompt and output so
        that score feedback can name the completion by its id."""
        outputs: dict[int, str] = defaultdict(str)
        async for index, delta in events:
            outputs[index] += delta.text
            yield index, delta
        rows = [CompletionToRecord(generation_id, index, adapter.adapter_id, adapter.version,
                                   records[index // n], text)
                for index, text in sorted(outputs.items())]
        try:
            await asyncio.to_thread(self.feedback.record, rows)
        except Exception:  # the answer matters more than its record: serve it regardless
            logger.exception("could not record completion %s", generation_id)


async def _charged(events: AsyncIterator[tuple[int, GenerationDelta]], budget: TokenBudget,
                   tenant: str) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """Take what the request generated out of its tenant's budget, however it ends."""
    tokens = 0
    try:
        async for event in events:
            tokens += len(event[1].token_ids)
            yield event
    finally:
        budget.spend(tenant, tokens)


def _choice_sampling(spec: SamplingSpec, sample: int) -> SamplingSpec:
    # With n > 1 and a seed, each sample gets its own seed so the choices differ, yet the
    # whole response stays reproducible.
    if spec.seed is None or sample == 0:
        return spec
    return replace(spec, seed=(spec.seed + sample) % 2**63)
