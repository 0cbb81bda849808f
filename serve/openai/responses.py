"""Generations rendered as OpenAI responses: whole (JSON) or streamed (server-sent events).

Every logprob that leaves here is a finite number: JSON has no NaN or infinity, and a value
the encoder cannot write must fail only the request it belongs to.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing

from pydantic import BaseModel

from ..engine.interface import FinishReason, GenerationDelta, TokenLogprob
from ..errors import LoraloopError, NonFiniteOutput, error_body
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatFinishReason,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    TopLogprob,
    Usage,
)
from .service import Generation, collect

# A token the model gives probability 0 has logprob -inf; it is reported as this floor, as
# vLLM's own OpenAI server does. NaN and +inf have no such reading: they fail the request.
LOGPROB_FLOOR = -9999.0


def _usage(generation: Generation, completion_tokens: int) -> Usage:
    prompt = generation.prompt_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion_tokens,
        total_tokens=prompt + completion_tokens,
    )


def _finite(logprob: float, model: str) -> float:
    if math.isnan(logprob) or logprob == math.inf:
        raise NonFiniteOutput(
            f"The model computed a log probability of {logprob} for this request, which "
            "JSON cannot carry, so the request failed; other requests are not affected. "
            f"If it happens again, an operator should check the weights serving '{model}'."
        )
    return max(logprob, LOGPROB_FLOOR)


def _chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...] | None, model: str):
    if tokens is None:
        return None

    def top(token: str, logprob: float) -> TopLogprob:
        return TopLogprob(token=token, logprob=_finite(logprob, model), bytes=list(token.encode()))

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                **top(t.token, t.logprob).model_dump(),
                top_logprobs=[top(tok, lp) for tok, lp in t.top],
            )
            for t in tokens
        ]
    )


def _completion_logprobs(tokens, model: str, start_offset: int = 0) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    offsets, offset = [], start_offset
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[_finite(t.logprob, model) for t in tokens],
        top_logprobs=[{tok: _finite(lp, model) for tok, lp in t.top} for t in tokens],
        text_offset=offsets,
    )


def _chat_finish(reason: FinishReason | None, called_tools: bool) -> ChatFinishReason | None:
    # OpenAI's reason for an answer that ends in tool calls; cut short, it stays "length".
    return "tool_calls" if called_tools and reason == "stop" else reason


def _assistant_message(generation: Generation, text: str, finish: str | None) -> AssistantMessage:
    """The message of one finished choice, checked against its schemas (see answer_check)."""
    if generation.tool_reader is None:
        message = AssistantMessage(content=text)
    else:
        content, calls = generation.tool_reader().whole(text, cut_off=finish == "length")
        message = AssistantMessage(content=content, tool_calls=calls)
    if generation.check is not None:
        # Complete calls are whole even in an answer cut short; other content only once
        # the answer ended by itself.
        generation.check.calls((c.function.name, c.function.arguments) for c in message.tool_calls)
        if finish == "stop" and not message.tool_calls:
            generation.check.content_of(text)
    return message


async def chat_completion(generation: Generation, with_logprobs: bool) -> ChatCompletion:
    results = await collect(generation)
    choices = []
    for i, r in enumerate(results):
        message = _assistant_message(generation, r.text, r.finish_reason)
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=_chat_logprobs(r.logprobs, generation.model) if with_logprobs else None,
                finish_reason=_chat_finish(r.finish_reason, bool(message.tool_calls)),
            )
        )
    return ChatCompletion(
        id=generation.id,
        created=generation.created,
        model=generation.model,
        choices=choices,
        usage=_usage(generation, sum(r.completion_tokens for r in results)),
    )


async def completion(generation: Generation, with_logprobs: bool) -> Completion:
    results = await collect(generation)
    for r in results:
        if generation.check is not None and r.finish_reason == "stop":
            generation.check.content_of(r.text)
    return Completion(
        id=generation.id,
        created=generation.created,
        model=generation.model,
        choices=[
            CompletionChoice(
                index=i,
                text=r.text,
                logprobs=_completion_logprobs(r.logprobs, generation.model)
                if with_logprobs
                else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=_usage(generation, sum(r.completion_tokens for r in results)),
    )


def _sse(message: BaseModel | dict | str) -> str:
    if isinstance(message, BaseModel):
        message = message.model_dump_json()
    elif isinstance(message, dict):  # an error event: JSON, as every other event
        message = json.dumps(message)
    return f"data: {message}\n\n"


async def _event_stream(
    generation: Generation,
    include_usage: bool,
    opening: Sequence[BaseModel],
    chunk: Callable[[int, GenerationDelta], BaseModel | None],
    usage_chunk: Callable[[Usage], BaseModel],
) -> AsyncIterator[str]:
    completion_tokens = 0
    try:
        for message in opening:
            yield _sse(message)
        # Closed however the loop ends, so a chunk that cannot be written (a non-finite
        # logprob) also aborts the request's engine work.
        async with aclosing(generation.events) as events:
            async for index, delta in events:
                completion_tokens += len(delta.token_ids)
                if (event := chunk(index, delta)) is not None:
                    yield _sse(event)
        if include_usage:
            yield _sse(usage_chunk(_usage(generation, completion_tokens)))
    except LoraloopError as exc:
        # Headers are gone already: the error travels as an event, as OpenAI's does.
        yield _sse(error_body(exc.message, exc.error_type, param=exc.param, code=exc.code))
    yield _sse("[DONE]")


def chat_events(generation: Generation, include_usage: bool) -> AsyncIterator[str]:
    def make(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=generation.id,
            created=generation.created,
            model=generation.model,
            choices=choices,
            usage=usage,
        )

    readers = (
        [generation.tool_reader() for _ in range(generation.choices)]
        if generation.tool_reader
        else None
    )
    texts = [""] * generation.choices  # each choice's text so far, checked once it ends

    def chunk(index: int, delta: GenerationDelta) -> ChatCompletionChunk | None:
        texts[index] += delta.text
        if delta.finish_reason is not None and generation.check is not None:
            # Before the last chunk: an answer that breaks its schema ends in an error event.
            _assistant_message(generation, texts[index], delta.finish_reason)
        logprobs = _chat_logprobs(delta.logprobs, generation.model)
        finish: ChatFinishReason | None
        if readers is None:
            message, finish = ChatDelta(content=delta.text), delta.finish_reason
        else:
            reader = readers[index]
            content, calls = reader.delta(
                delta.text, delta.token_ids, delta.finish_reason is not None
            )
            message = ChatDelta(content=content, tool_calls=calls or None)
            finish = _chat_finish(delta.finish_reason, reader.called)
            # While the parser holds text back (a call may be starting), there is nothing
            # to send yet; the text comes with a later chunk.
            if content is None and not calls and finish is None and logprobs is None:
                return None
        return make(
            [ChatChunkChoice(index=index, delta=message, logprobs=logprobs, finish_reason=finish)]
        )

    opening = [
        make(
            [
                ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                for i in range(generation.choices)
            ]
        )
    ]
    return _event_stream(
        generation, include_usage, opening, chunk=chunk, usage_chunk=lambda usage: make([], usage)
    )


def completion_events(generation: Generation, include_usage: bool) -> AsyncIterator[str]:
    def make(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(
            id=generation.id,
            created=generation.created,
            model=generation.model,
            choices=choices,
            usage=usage,
        )

    texts = [""] * generation.choices

    def chunk(index: int, delta: GenerationDelta) -> Completion:
        texts[index] += delta.text
        if delta.finish_reason == "stop" and generation.check is not None:
            generation.check.content_of(texts[index])
        return make(
            [
                CompletionChoice(
                    index=index,
                    text=delta.text,
                    logprobs=_completion_logprobs(delta.logprobs, generation.model),
                    finish_reason=delta.finish_reason,
                )
            ]
        )

    return _event_stream(
        generation, include_usage, [], chunk=chunk, usage_chunk=lambda usage: make([], usage)
    )
