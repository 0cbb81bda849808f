"""HTTP routes of the OpenAI-compatible API; translation only, the logic is in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from ..auth import Caller
from ..disconnect import unless_disconnected
from ..headers import VERSION_HEADER
from ..middleware import facts_of
from ..state import ServerState, get_state
from . import responses
from .models import list_models
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelList,
)
from .service import Generation

router = APIRouter(prefix="/v1")
StateDep = Annotated[ServerState, Depends(get_state)]


def _label(request: Request, generation: Generation) -> None:
    facts, adapter = facts_of(request), generation.adapter
    facts.adapter = adapter.adapter_id if adapter else generation.model
    facts.version = str(adapter.version) if adapter else ""


def _headers(generation: Generation) -> dict[str, str]:
    return {VERSION_HEADER: generation.model} if generation.adapter else {}


def _stream(events, generation: Generation) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_headers(generation))


def _whole(result: BaseModel | Response, generation: Generation) -> Response:
    if isinstance(result, Response):  # the client left; nobody reads this
        return result
    return JSONResponse(result.model_dump(mode="json"), headers=_headers(generation))


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: StateDep, caller: Caller
):
    generation = await state.service.chat(body, caller.scope)
    _label(request, generation)
    if body.stream:
        return _stream(responses.chat_events(generation, body.include_usage), generation)
    whole = responses.chat_completion(generation, body.logprobs)
    return _whole(await unless_disconnected(request, whole), generation)


@router.post("/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest, request: Request, state: StateDep, caller: Caller
):
    generation = await state.service.complete(body, caller.scope)
    _label(request, generation)
    if body.stream:
        return _stream(responses.completion_events(generation, body.include_usage), generation)
    whole = responses.completion(generation, body.logprobs is not None)
    return _whole(await unless_disconnected(request, whole), generation)


@router.get("/models", response_model=ModelList)
async def get_models(state: StateDep, caller: Caller) -> ModelList:
    return list_models(state.routes.snapshot, state.started_at, caller.scope)
