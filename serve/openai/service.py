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
import json
import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from loraloop.adapters.feedback import CompletionToRecord, FeedbackBook
from loraloop.adapters.prompts import PromptRenderer, StoredPrompt

from ..admission import AdmissionGate
from ..engine.protocol import AdapterRef, Engine, GenerationDelta, SamplingSpec, TokenLogprob
from ..errors import EngineUnavailable, InvalidRequest
from ..metrics import ServeMetrics
from ..rollout_traffic import RolloutTraffic, ShadowSource
from ..routing import CurrentRoutes
from ..settings import RequestLimits
from ..streams import merge_indexed, prepend, releasing
from ..token_budget import TokenBudget
from ..warmup import AdapterWarmer
from .answer_check import AnswerCheck, SchemaCheck
from .grammar_gate import GrammarGate
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    stored_prompt,
)
from .structured import check_schema, response_constraint

if TYPE_CHECKING:  # vLLM's parsers load only where an operator names a tool-call format
    from .tool_calls import ToolCallFormat, ToolCallPlan, ToolCallReader

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
    # Chat requests that may call tools: a new reader per choice turns its text into calls.
    tool_reader: Callable[[], ToolCallReader] | None = None
    # Structured requests: what each finished answer must satisfy before it is sent.
    check: AnswerCheck | None = None


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
        tool_format: ToolCallFormat | None = None,
        rollouts: RolloutTraffic | None = None,
    ) -> None:
        self.engine, self.renderer, self.warmer = engine, renderer, warmer
        self.admission, self.limits, self.routes = admission, limits, routes
        self.feedback, self.metrics = feedback, metrics
        self.tool_format = tool_format
        self.rollouts = rollouts  # counts and shadows requests of rollouts' versions
        self.ready = False
        self.cache_salts = CacheSalts()
        self.grammars = GrammarGate(renderer.tokenizer, limits.max_schema_compile_s)

    async def chat(self, request: ChatCompletionRequest, tenant: str | None) -> Generation:
        """`tenant`: whose adapters the caller may use; None for every tenant's."""
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        if len(request.messages) > self.limits.max_messages:
            raise InvalidRequest(
                f"At most {self.limits.max_messages} messages per request.", param="messages"
            )
        tools = self._tool_plan(request)  # first: a tool schema's own limits name `tools`
        stored = stored_prompt(request.messages, request.tools)
        self._check_prompt_chars(stored.chars, "messages")
        top = self._check_logprobs(request.top_logprobs or 0, "top_logprobs")
        sampling = self._sampling(request, logprobs=top if request.logprobs else None)
        if tools is not None:  # its grammar covers response_format too
            sampling = replace(sampling, constraint=tools.constraint or sampling.constraint,
                               skip_special_tokens=tools.skip_special_tokens)
        prompt = self.renderer.render(stored)
        sampling = self._fit(sampling, request, prompt, "messages")
        await self.grammars.check(sampling.constraint, tenant)
        generation = await self._start("chatcmpl", adapter, [(prompt, sampling)], request.n,
                                       tenant, [stored])
        if tools is not None:
            generation.tool_reader = lambda: tools.reader(prompt)
        generation.check = self._answer_check(request, tools is not None)
        return generation

    def _answer_check(self, request: SamplingFields, tools: bool) -> AnswerCheck | None:
        """What the answers must satisfy: the tools' parameters when the model may call
        them (their grammar covers the answer), response_format otherwise."""
        count = self.metrics.invalid_structured_outputs
        check = AnswerCheck(violated=lambda param: count.labels(param).inc())
        if tools:
            check.tools = {tool.function.name: SchemaCheck(tool.function.parameters or {})
                           for tool in request.tools}
            return check
        response_format = request.response_format
        if response_format is None or response_format.type == "text":
            return None
        check.content = SchemaCheck(response_format.json_schema.json_schema
                                    if response_format.type == "json_schema"
                                    else {"type": "object"})
        return check

    def _tool_plan(self, request: ChatCompletionRequest) -> ToolCallPlan | None:
        """How the request's tools constrain sampling and are read back; None when the model
        may not call any."""
        tools = request.tools or ()
        if len(tools) > self.limits.max_tools:
            raise InvalidRequest(f"At most {self.limits.max_tools} tools per request.",
                                 param="tools")
        grammars = {tool.function.name: json.loads(check_schema(
                        tool.function.parameters, "tools", self.limits))
                    for tool in tools if tool.function.parameters is not None}
        _check_tool_choice(request)
        if not request.calls_tools:
            return None
        if self.tool_format is None:
            raise InvalidRequest(
                "This server reads no tool calls for its base model: an operator names the "
                "model's format with --tool-call-parser.", param="tools")
        return self.tool_format.plan(request, grammars)

    async def complete(self, request: CompletionRequest, tenant: str | None) -> Generation:
        adapter = self.routes.snapshot.resolve(request.model, tenant)
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._check_logprobs(request.logprobs, "logprobs")
        sampling = self._sampling(request, logprobs=logprobs)
        token_lists = self._completion_prompts(request.prompt)
        prompts = [(ids, self._fit(sampling, request, ids, "prompt")) for ids in token_lists]
        await self.grammars.check(sampling.constraint, tenant)
        stored = None
        if self._records(adapter) or self.routes.snapshot.rollout_of(adapter):
            stored = [StoredPrompt(text=self.renderer.tokenizer.decode(ids))
                      for ids in token_lists]
        generation = await self._start("cmpl", adapter, prompts, request.n, tenant, stored)
        generation.check = self._answer_check(request, tools=False)
        return generation

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

    def _sampling(self, request: SamplingFields, *, logprobs: int | None) -> SamplingSpec:
        """The request's sampling settings, checked against the configured bounds; the token
        budget is set per prompt by `_fit`."""
        limits, max_tokens = self.limits, request.requested_max_tokens
        vocab = self.renderer.vocab_size
        if request.top_k is not None and request.top_k > vocab:
            raise InvalidRequest(f"top_k must be at most the vocabulary size, {vocab}.",
                                 param="top_k")
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
        return SamplingSpec(
            max_tokens=max_tokens or limits.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=_given(request.top_k, 0),
            min_p=_given(request.min_p, 0.0),
            seed=request.seed,
            stop=stop,
            logprobs=logprobs,
            presence_penalty=_given(request.presence_penalty, 0.0),
            frequency_penalty=_given(request.frequency_penalty, 0.0),
            repetition_penalty=_given(request.repetition_penalty, 1.0),
            logit_bias=self._logit_bias(request),
            constraint=response_constraint(request.response_format, limits),
        )

    def _logit_bias(self, request: SamplingFields) -> tuple[tuple[int, float], ...]:
        bias = request.logit_bias or {}
        if len(bias) > self.limits.max_logit_bias:
            raise InvalidRequest(
                f"logit_bias has {len(bias)} entries; the limit is {self.limits.max_logit_bias}.",
                param="logit_bias")
        vocab = self.renderer.vocab_size
        checked = []
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit() and int(token) < vocab):
                raise InvalidRequest(
                    f"logit_bias: '{token[:32]}' is not a token id; ids are 0 to {vocab - 1}.",
                    param="logit_bias")
            if not -100 <= value <= 100:
                raise InvalidRequest(
                    f"logit_bias: the bias of token {token} must be in [-100, 100].",
                    param="logit_bias")
            checked.append((int(token), value))
        return tuple(checked)

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

    def _fit(self, sampling: SamplingSpec, request: SamplingFields, prompt: list[int],
             prompt_param: str) -> SamplingSpec:
        return replace(sampling, max_tokens=self.renderer.max_tokens_for(
            len(prompt), request.requested_max_tokens, self.limits.default_max_tokens,
            prompt_param=prompt_param, max_tokens_param=request.max_tokens_param,
        ))

    async def _start(self, prefix: str, adapter: AdapterRef | None,
                     prompts: list[tuple[list[int], SamplingSpec]], n: int, tenant: str | None,
                     stored: list[StoredPrompt] | None = None) -> Generation:
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
                version=adapter.version if adapter else None, prompt_tokens=prompt_tokens)
            if tenant is not None and self.admission.budget is not None:
                events = _charged(events, self.admission.budget, tenant)
            events = releasing(events, ticket.release)
            if served is not None:  # outermost: a shadow is queued once all else is done
                events = served.watch(events, choices=len(streams), shadow=ShadowSource.of(
                    prompts, n, stored, cache_salt))
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


def _check_tool_choice(request: ChatCompletionRequest) -> None:
    names = [tool.function.name for tool in request.tools or ()]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: function names must be unique.", param="tools")
    choice = request.tool_choice
    if choice not in (None, "none", "auto") and not names:
        raise InvalidRequest("tool_choice: a tool call is required, but no tools are given.",
                             param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice: no tool is named '{choice.function.name}'; the tools are: "
            f"{', '.join(names)}.", param="tool_choice")


def _given(value, default):
    return default if value is None else value


def _choice_sampling(spec: SamplingSpec, sample: int) -> SamplingSpec:
    # With n > 1 and a seed, each sample gets its own seed so the choices differ, yet the
    # whole response stays reproducible.
    if spec.seed is None or sample == 0:
        return spec
    return replace(spec, seed=(spec.seed + sample) % 2**63)
