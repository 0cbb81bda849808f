"""HTTP routes of the feedback API; translation only, the logic is in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from ..auth import Caller
from ..errors import InvalidRequest
from ..headers import REPLAYED_HEADER
from ..state import ServerState, get_state
from .batch import store_lines
from .protocol import BatchResult, FeedbackPublic, FeedbackRequest, FeedbackStatsPublic

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


StateDep = Annotated[ServerState, Depends(get_state)]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]
MAX_BATCH_LINES = 1000
MAX_BATCH_BYTES = 16 << 20


@router.post("", status_code=201)
async def create_feedback(
    body: FeedbackRequest,
    state: StateDep,
    caller: Caller,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> FeedbackPublic:
    feedback, replayed = await state.feedback.submit(body, caller.scope, idempotency_key)
    response.headers[REPLAYED_HEADER] = str(replayed).lower()
    return feedback


@router.post("/batch")
async def create_feedback_batch(request: Request, state: StateDep, caller: Caller) -> BatchResult:
    """JSON lines, one feedback object per line (optionally with its own `idempotency_key`)."""
    if int(request.headers.get("content-length") or 0) > MAX_BATCH_BYTES:
        raise InvalidRequest(f"A batch is at most {MAX_BATCH_BYTES} bytes; split it.")
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The batch must be UTF-8 text, one JSON object per line.") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not 1 <= len(lines) <= MAX_BATCH_LINES:
        raise InvalidRequest(f"Send 1 to {MAX_BATCH_LINES} JSON lines.")
    return await store_lines(state.feedback, caller.scope, lines)


@router.get("/stats")
async def feedback_stats(
    state: StateDep, caller: Caller, adapter: Annotated[str, Query(max_length=256)]
) -> FeedbackStatsPublic:
    return await state.feedback.stats(adapter, caller.scope)
