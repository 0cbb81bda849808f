"""Admin routes for an adapter's activity over time (the console's charts): feedback, and
requests and tokens per version, by hour; translation only.

Readable by the admin and by the adapter's own tenant signed in to the console.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from loraloop.adapters.activity import read_feedback_activity
from loraloop.adapters.usage import UsageBook

from ..auth import AdapterReader
from ..state import ServerState, get_state
from . import service
from .protocol import FeedbackActivityPublic, UsagePublic

router = APIRouter(prefix="/admin/v1/adapters/{tenant}/{name}", tags=["admin"])
StateDep = Annotated[ServerState, Depends(get_state)]
Hours = Annotated[int, Query(ge=1, le=24 * 31)]


@router.get("/feedback-activity")
async def feedback_activity(
    tenant: str, name: str, state: StateDep, _: AdapterReader, hours: Hours = 24
) -> FeedbackActivityPublic:
    activity = await service.offload(
        read_feedback_activity, state.registry.db, f"{tenant}/{name}", hours=hours
    )
    return FeedbackActivityPublic.model_validate(activity)


@router.get("/usage")
async def usage(
    tenant: str, name: str, state: StateDep, _: AdapterReader, hours: Hours = 24
) -> list[UsagePublic]:
    """Requests and tokens per version and hour, every server's added up (each adds its own
    every few seconds); oldest first, hours without any left out."""
    records = await service.offload(
        UsageBook(state.registry.db).recent, f"{tenant}/{name}", hours=hours
    )
    return [UsagePublic.model_validate(record) for record in records]
