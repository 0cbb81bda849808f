"""Generations rendered as OpenAI responses: whole (JSON) or streamed (server-sent events)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel

from ..engine.protocol import GenerationDelta, TokenLogprob
from ..errors import LoraloopError, error_body
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    TopLogprob,
    Usage,
)
from .service import Generation, collect


def _usage(generation: Generation, completion_tokens: int) -> Usage:
    prompt = generation.prompt_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens,
                 total_tokens=prompt + completion_tokens)


def _chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...] | None):
    if tokens is None:
        return None

    def top(token: str, logprob: float) -> TopLogprob:
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

    return ChatLogprobs(content=[
        ChatTokenLogprob(**top(t.token, t.logprob).model_dump(),
                         top_logprobs=[top(tok, lp) for tok, lp in t.top])
        for t in tokens
    ])


def _completion_logprobs(tokens, start_offset: int = 0) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    offsets, offset = [], start_offset
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top) for t in tokens],
        text_offset=offsets,
    )


async def chat_completion(generation: Generation, with_logprobs: bool) -> ChatCompletion:
    results = await collect(generation)
    return ChatCompletion(
        id=generation.id, created=generation.created, model=generation.model,
        choices=[
            ChatChoice(index=i, message=AssistantMessage(content=r.text),
                       logprobs=_chat_logprobs(r.logprobs) if with_logprobs else None,
                       finish_reason=r.finish_reason)
            for i, r in enumerate(results)
        ],
        usage=_usage(generation, sum(r.completion_tokens for r in results)),
    )


async def completion(generation: Generation, with_logprobs: bool) -> Completion:
    results = await collect(generation)
    return Completion(
        id=generation.id, created=generation.created, model=generation.model,
        choices=[
            CompletionChoice(index=i, text=r.text,
                             logprobs=_completion_logprobs(r.logprobs) if with_logprobs else None,
                             finish_reason=r.finish_reason)
            for i, r in enumerate(results)
        ],
        usage=_usage(generation, sum(r.completion_tokens for r in results)),
    )


def _sse(message: BaseModel | dict | str) -> str:
    if isinstance(message, BaseModel):
        message = message.model_dump_json()
    return f"data: {message}\n\n"


async def _event_stream(generation: Generation, include_usage: bool, opening: list[BaseModel],
                        chunk: Callable[[int, GenerationDelta], BaseModel],
                        usage_chunk: Callable[[Usage], BaseModel]) -> AsyncIterator[str]:
    completion_tokens = 0
    try:
        for message in opening:
            yield _sse(message)
        async for index, delta in generation.events:
            completion_tokens += len(delta.token_ids)
            yield _sse(chunk(index, delta))
        if include_usage:
            yield _sse(usage_chunk(_usage(generation, completion_tokens)))
    except LoraloopError as exc:
        # Headers are gone already: the error travels as an event, as OpenAI's does.
        yield _sse(error_body(exc.message, exc.error_type, param=exc.param, code=exc.code))
    yield _sse("[DONE]")


def chat_events(generation: Generation, include_usage: bool) -> AsyncIterator[str]:
    def make(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=generation.id, created=generation.created,
                                   model=generation.model, choices=choices, usage=usage)

    opening = [make([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                     for i in range(generation.choices)])]
    return _event_stream(
        generation, include_usage, opening,
        chunk=lambda i, d: make([ChatChunkChoice(
            index=i, delta=ChatDelta(content=d.text), logprobs=_chat_logprobs(d.logprobs),
            finish_reason=d.finish_reason)]),
        usage_chunk=lambda usage: make([], usage),
    )


def completion_events(generation: Generation, include_usage: bool) -> AsyncIterator[str]:
    def make(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=generation.id, created=generation.created,
                          model=generation.model, choices=choices, usage=usage)

    return _event_stream(
        generation, include_usage, [],
        chunk=lambda i, d: make([CompletionChoice(
            index=i, text=d.text, logprobs=_completion_logprobs(d.logprobs),
            finish_reason=d.finish_reason)]),
        usage_chunk=lambda usage: make([], usage),
    )
