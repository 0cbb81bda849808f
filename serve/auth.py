"""Who is calling: the admin credential, a tenant's key, a console session, or nobody.

Keys arrive as `Authorization: Bearer <key>` (what the openai SDK sends). Tenant keys are
checked against the routing snapshot, which carries the unrevoked keys' hashes, so a request
costs no database round trip and a revocation reaches every replica with the next refresh.

On the admin API and the console's own routes, a console session cookie (sessions.py) may
stand in for the key it was signed in with. Such a request that changes anything must also
carry the session's CSRF token in a header; key-bearing requests (the CLI) need none, since
a browser never adds a key on its own. A tenant's session is checked against the snapshot
like its key, so revoking the key ends the session too.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from loraloop.adapters.console_sessions import SessionRecord
from loraloop.adapters.errors import NotFound
from loraloop.adapters.tenants import key_matches, key_prefix

from .errors import CsrfRefused, Forbidden, InvalidRequest, Unauthenticated
from .headers import ACTOR_HEADER
from .middleware import facts_of
from .sessions import ADMIN, CSRF_HEADER, SESSION_COOKIE
from .state import ServerState, get_state

ACTOR_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# Where a console session may stand in for a key; the OpenAI API takes keys only.
SESSION_PATHS = ("/admin/", "/console/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    tenant: str | None  # None: may reach every tenant's adapters
    is_admin: bool
    name: str  # how the audit trail names the caller
    key_prefix: str | None = None  # a tenant key's, to sign a console session in with
    # The CSRF token of the console session that identified the caller; None: a key did.
    session_csrf: str | None = None

    @property
    def via_session(self) -> bool:
        return self.session_csrf is not None

    @property
    def scope(self) -> str | None:
        """The tenant whose adapters this caller may use; None for all."""
        return None if self.is_admin else self.tenant


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _actor(request: Request, role: str) -> str:
    actor = request.headers.get(ACTOR_HEADER)
    if actor is None:
        return role
    if not ACTOR_NAME.fullmatch(actor):
        raise InvalidRequest(
            f"{ACTOR_HEADER} must be 1 to 64 letters, digits or '._@-'.", param=ACTOR_HEADER
        )
    return f"{role}:{actor}"


def _is_admin_key(key: str, state: ServerState) -> bool:
    admin = state.settings.admin_key
    return admin is not None and hmac.compare_digest(
        key.encode(), admin.get_secret_value().encode()
    )


async def authenticate(
    request: Request, response: Response, state: ServerState = Depends(get_state)
) -> Principal:
    principal = _identify(request, state)
    if principal is None:  # no key: a console session, read from the registry off the loop
        principal = await run_in_threadpool(_session_caller, request, response, state)
    facts_of(request).caller = principal.name
    return principal


def _identify(request: Request, state: ServerState) -> Principal | None:
    """The caller by key (no registry round trip); None when only a session can say."""
    if not state.settings.auth:
        return Principal(tenant=None, is_admin=True, name=_actor(request, "local"))
    key = _bearer(request)
    if key is not None:
        return identify_key(key, request, state)
    if SESSION_COOKIE in request.cookies and request.url.path.startswith(SESSION_PATHS):
        return None
    raise Unauthenticated("Send your API key as 'Authorization: Bearer <key>'.")


def _session_caller(request: Request, response: Response, state: ServerState) -> Principal:
    session = state.sessions.read(request.cookies[SESSION_COOKIE])
    if session is None:
        raise Unauthenticated(
            "Your console session ended (signed out, expired or revoked); sign in again."
        )
    return _session_principal(session, request, response, state)


def identify_key(key: str, request: Request, state: ServerState) -> Principal:
    if _is_admin_key(key, state):
        return Principal(tenant=None, is_admin=True, name=_actor(request, "admin"))
    prefix = key_prefix(key)
    active = state.routes.snapshot.keys.get(prefix) if prefix else None
    if active is None or not key_matches(key, active.key_hash):
        raise Unauthenticated("The API key is not valid. Check it, or ask an operator for one.")
    return Principal(
        tenant=active.tenant, is_admin=False, name=f"tenant:{active.tenant}", key_prefix=prefix
    )


def _session_principal(
    session: SessionRecord, request: Request, response: Response, state: ServerState
) -> Principal:
    if request.method not in SAFE_METHODS and not state.sessions.csrf_valid(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise CsrfRefused(
            f"This change came with a console session but without its "
            f"{CSRF_HEADER} header; reload the console and try again."
        )
    if session.subject == state.sessions.admin_subject:
        principal = Principal(
            tenant=None, is_admin=True, name=session.actor, session_csrf=session.csrf_token
        )
    elif session.subject.startswith(f"{ADMIN}:"):
        raise Unauthenticated(
            "The admin credential changed since this session signed in; "
            "sign in again with the current one."
        )
    else:
        active = state.routes.snapshot.keys.get(session.subject)
        if active is None:
            raise Unauthenticated(
                "The key this session signed in with was revoked; sign in again with a valid key."
            )
        principal = Principal(
            tenant=active.tenant,
            is_admin=False,
            name=session.actor,
            key_prefix=session.subject,
            session_csrf=session.csrf_token,
        )
    if state.sessions.slide(session):
        set_session_cookie(
            response, request, request.cookies[SESSION_COOKIE], state.sessions.idle_s
        )
    return principal


def set_session_cookie(response: Response, request: Request, value: str, max_age: int) -> None:
    # Secure whenever the browser reached us over TLS (directly, or through a proxy whose
    # X-Forwarded-Proto uvicorn trusts): the cookie then never travels in clear text.
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def require_admin(principal: Principal = Depends(authenticate)) -> Principal:
    if not principal.is_admin:
        raise Forbidden("This route needs the admin credential; tenant keys cannot use it.")
    return principal


async def adapter_reader(
    tenant: str, name: str, principal: Principal = Depends(authenticate)
) -> Principal:
    """Who may read one adapter: the admin, or its own tenant signed in to the console
    (another tenant's adapter looks exactly like a missing one). Tenant keys themselves stay
    off the admin API."""
    _check_reader(principal)
    if principal.tenant is not None and principal.tenant != tenant:
        raise NotFound(f"There is no adapter '{tenant}/{name}'. Create it first.")
    return principal


async def adapters_reader(principal: Principal = Depends(authenticate)) -> Principal:
    """Who may list adapters: as `adapter_reader`; a tenant's list holds its own only."""
    _check_reader(principal)
    return principal


def _check_reader(principal: Principal) -> None:
    if not principal.is_admin and not principal.via_session:
        raise Forbidden("This route needs the admin credential; tenant keys cannot use it.")


async def metrics_scraper(request: Request, state: ServerState = Depends(get_state)) -> None:
    """Who may read /metrics: anyone who reaches the port, unless the operator set a metrics
    token; then only who sends it (a scraper holds that token, not an admin key or a
    tenant's)."""
    token = state.settings.metrics.token
    if token is None:
        return
    given = _bearer(request)
    if given is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthenticated(
            "/metrics needs the metrics token: send it as 'Authorization: "
            "Bearer <token>' (Prometheus: the scrape config's "
            "authorization credentials)."
        )


Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
AdapterReader = Annotated[Principal, Depends(adapter_reader)]
AdaptersReader = Annotated[Principal, Depends(adapters_reader)]
