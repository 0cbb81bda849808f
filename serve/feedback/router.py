"""HTTP routes of the feedback API; translation only, the logic is in service.py."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import ValidationError

from ..auth import Caller
from ..errors import InvalidRequest, describe_error, validation_error
from ..state import ServerState, get_state
from .protocol import (
    BatchLineResult,
    BatchResult,
    FeedbackPublic,
    FeedbackRequest,
    FeedbackStatsPublic,
)

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
StateDep = Annotated[ServerState, Depends(get_state)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                               max_length=255)]
MAX_BATCH_LINES = 1000
MAX_BATCH_BYTES = 16 << 20
REPLAYED_HEADER = "Idempotent-Replayed"


@router.post("", status_code=201)
async def create_feedback(body: FeedbackRequest, state: StateDep, caller: Caller,
                          response: Response,
                          idempotency_key: IdempotencyKey = None) -> FeedbackPublic:
    feedback, replayed = await state.feedback.submit(body, caller.scope, idempotency_key)
    response.headers[REPLAYED_HEADER] = str(replayed).lower()
    return feedback


async def _batch_line(state: ServerState, caller, number: int, text: str) -> BatchLineResult:
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise InvalidRequest("Each line must be a JSON object.")
        key = fields.pop("idempotency_key", None)
        body = FeedbackRequest.model_validate(fields)
        feedback, replayed = await state.feedback.submit(body, caller.scope, key)
        return BatchLineResult(line=number, status=200 if replayed else 201, feedback=feedback)
    except json.JSONDecodeError as exc:
        status, error = describe_error(InvalidRequest(f"The line is not JSON: {exc.msg}."))
    except ValidationError as exc:
        status, error = describe_error(validation_error(exc, location="body"))
    except Exception as exc:  # each line gets its own result; unknown errors stay sanitized
        status, error = describe_error(exc)
    return BatchLineResult(line=number, status=status, error=error["error"])


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
    results = [await _batch_line(state, caller, number, text) for number, text in lines]
    created = sum(r.status in (200, 201) for r in results)
    return BatchResult(created=created, failed=len(results) - created, data=results)


@router.get("/stats")
async def feedback_stats(state: StateDep, caller: Caller,
                         adapter: Annotated[str, Query(max_length=256)]) -> FeedbackStatsPublic:
    adapter_id, _ = state.feedback.adapter_for(adapter, caller.scope)
    stats = await asyncio.to_thread(state.feedback.book.stats, adapter_id)
    return FeedbackStatsPublic(adapter=stats.adapter_id, total=stats.total, by_kind=stats.by_kind,
                               by_status=stats.by_status, by_version=stats.by_version)
