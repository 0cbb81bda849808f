"""Admin routes for console sessions: list them, end one, end all of one subject; translation
only. Listings never show a session's cookie or CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from ..auth import Admin, require_admin
from ..state import ServerState, get_state
from . import service
from .protocol import SessionPublic, SessionSubject

router = APIRouter(
    prefix="/admin/v1/console-sessions", tags=["admin"], dependencies=[Depends(require_admin)]
)
StateDep = Annotated[ServerState, Depends(get_state)]


@router.get("")
async def list_sessions(
    state: StateDep,
    subject: SessionSubject | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[SessionPublic]:
    """Newest first, ended ones too; `subject`: "admin" (the sessions of the admin
    credential in force) or a tenant key's prefix."""
    stored = None if subject is None else state.sessions.subject(subject)
    sessions = await service.offload(state.registry.sessions.list, subject=stored, limit=limit)
    return [SessionPublic.of(s, live=state.sessions.is_live(s)) for s in sessions]


@router.post("/{session_id}/revoke")
async def revoke_session(
    state: StateDep, admin: Admin, session_id: Annotated[int, Path(ge=1, le=2**62)]
) -> SessionPublic:
    ended = await service.offload(state.registry.sessions.revoke, session_id, actor=admin.name)
    return SessionPublic.of(ended, live=state.sessions.is_live(ended))


@router.post("/revoke")
async def revoke_sessions(state: StateDep, admin: Admin, subject: SessionSubject) -> dict:
    """End every live session of one subject: an operator's (admin) or one key's."""
    ended = await service.offload(
        state.registry.sessions.revoke_all, state.sessions.subject(subject), actor=admin.name
    )
    return {"subject": subject, "ended": ended}
