"""The console's page and its session routes: sign in with a key, who am I, sign out.

Signing in checks the key as every API request does and hands back a session cookie
(sessions.py) and the CSRF token the page sends with each change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..auth import Caller, Principal, clear_session_cookie, identify_key, set_session_cookie
from ..errors import InvalidRequest
from ..sessions import ADMIN_SUBJECT, SESSION_COOKIE
from ..state import ServerState, get_state
from .protocol import SessionPublic, SignIn

STATIC = Path(__file__).parent / "static"
STATIC_ROUTE = "/console/static"
router = APIRouter(prefix="/console", include_in_schema=False)
StateDep = Annotated[ServerState, Depends(get_state)]


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


@router.get("")
@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.post("/session")
async def sign_in(body: SignIn, request: Request, response: Response,
                  state: StateDep) -> SessionPublic:
    principal = identify_key(body.key, request, state)
    if principal.is_admin:
        subject, actor = ADMIN_SUBJECT, f"console:{body.name or 'admin'}"
    elif body.name is not None:
        raise InvalidRequest("Only the admin credential signs in with a name.", param="name")
    else:
        subject, actor = principal.key_prefix, principal.name
    session, cookie = state.sessions.issue(subject, actor)
    set_session_cookie(response, request, cookie, state.sessions.idle_s)
    return _public(principal, actor, state.sessions.csrf_token(session), state)


@router.get("/session")
async def who_am_i(principal: Caller, request: Request, state: StateDep) -> SessionPublic:
    session = state.sessions.read(request.cookies.get(SESSION_COOKIE, ""))
    # Without a session (auth off, or a key in the header) there is no cookie to forge with.
    token = state.sessions.csrf_token(session) if session and principal.via_session else ""
    return _public(principal, principal.name, token, state)


@router.delete("/session", status_code=204)
async def sign_out(request: Request, response: Response) -> None:
    # No session needed: an expired one must be able to clear its cookie too.
    clear_session_cookie(response, request)


def _public(principal: Principal, actor: str, token: str, state: ServerState) -> SessionPublic:
    return SessionPublic(role="admin" if principal.is_admin else "tenant",
                         tenant=principal.tenant, actor=actor, csrf_token=token,
                         idle_minutes=state.settings.console_idle_minutes)
