"""The console's page and its session routes: sign in with a key, who am I, sign out.

Signing in checks the key as every API request does (throttled per address and key prefix:
sign_ins.py) and hands back a session cookie (sessions.py) and the CSRF token the page sends
with each change. Signing out ends the session in the registry, for every replica.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from loraloop.adapters.tenants import key_prefix

from ..auth import Caller, Principal, clear_session_cookie, identify_key, set_session_cookie
from ..errors import InvalidRequest, RateLimited, Unauthenticated
from ..sessions import SESSION_COOKIE
from ..state import ServerState, get_state
from .protocol import SessionPublic, SignIn

logger = logging.getLogger(__name__)
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
async def sign_in(
    body: SignIn, request: Request, response: Response, state: StateDep
) -> SessionPublic:
    client = request.client.host if request.client else "unknown"
    sources = (f"address:{client}", f"prefix:{key_prefix(body.key) or body.key[:12]}")
    wait_s = state.sign_ins.retry_after(sources)
    if wait_s is not None:
        state.metrics.console_sign_ins.labels("throttled").inc()
        logger.warning("console sign-in from %s throttled for %d s", client, wait_s)
        raise RateLimited(f"Too many wrong keys; try again in {wait_s} s.", retry_after_s=wait_s)
    try:
        principal = identify_key(body.key, request, state)
    except Unauthenticated:
        state.sign_ins.failed(sources)
        state.metrics.console_sign_ins.labels("refused").inc()
        logger.warning("console sign-in from %s refused: not a valid key", client)
        raise
    if principal.is_admin:
        subject, actor = state.sessions.admin_subject, f"console:{body.name or 'admin'}"
    elif body.name is not None:
        raise InvalidRequest("Only the admin credential signs in with a name.", param="name")
    elif principal.key_prefix is None:  # every tenant key has one: authentication sets it
        raise RuntimeError("a tenant caller came without its key's prefix")
    else:
        subject, actor = principal.key_prefix, principal.name
    session, cookie = await run_in_threadpool(state.sessions.issue, subject, actor, client)
    state.metrics.console_sign_ins.labels("signed_in").inc()
    set_session_cookie(response, request, cookie, state.sessions.idle_s)
    return _public(principal, actor, session.csrf_token, state)


@router.get("/session")
async def who_am_i(principal: Caller, state: StateDep) -> SessionPublic:
    # Without a session (auth off, or a key in the header) there is no token to forge with.
    return _public(principal, principal.name, principal.session_csrf or "", state)


@router.delete("/session", status_code=204)
async def sign_out(request: Request, response: Response, state: StateDep) -> None:
    # No valid session needed: an expired one must be able to clear its cookie too.
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        ended = await run_in_threadpool(state.sessions.end, cookie, actor="sign-out")
        if ended is not None:
            logger.info("console session %d of %s signed out", ended.id, ended.actor)
    clear_session_cookie(response, request)


def _public(principal: Principal, actor: str, token: str, state: ServerState) -> SessionPublic:
    return SessionPublic(
        role="admin" if principal.is_admin else "tenant",
        tenant=principal.tenant,
        actor=actor,
        csrf_token=token,
        idle_minutes=state.settings.console_idle_minutes,
    )
