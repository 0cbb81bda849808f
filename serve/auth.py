"""Who is calling: the admin credential, a tenant's key, or nobody.

Keys arrive as `Authorization: Bearer <key>` (what the openai SDK sends). Tenant keys are
checked against the routing snapshot, which carries the unrevoked keys' hashes, so a request
costs no database round trip and a revocation reaches every replica with the next refresh.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from loraloop.adapters.tenants import key_matches, key_prefix

from .errors import Forbidden, InvalidRequest, Unauthenticated
from .headers import ACTOR_HEADER
from .middleware import facts_of
from .state import ServerState, get_state

_ACTOR = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True)
class Principal:
    tenant: str | None  # None: may reach every tenant's adapters
    is_admin: bool
    name: str  # how the audit trail names the caller

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
    if not _ACTOR.fullmatch(actor):
        raise InvalidRequest(f"{ACTOR_HEADER} must be 1 to 64 letters, digits or '._@-'.",
                             param=ACTOR_HEADER)
    return f"{role}:{actor}"


def _is_admin_key(key: str, state: ServerState) -> bool:
    admin = state.settings.admin_key
    return admin is not None and hmac.compare_digest(
        key.encode(), admin.get_secret_value().encode()
    )


async def authenticate(request: Request, state: ServerState = Depends(get_state)) -> Principal:
    principal = _identify(request, state)
    facts_of(request).caller = principal.name
    return principal


def _identify(request: Request, state: ServerState) -> Principal:
    if not state.settings.auth:
        return Principal(tenant=None, is_admin=True, name=_actor(request, "local"))
    key = _bearer(request)
    if key is None:
        raise Unauthenticated("Send your API key as 'Authorization: Bearer <key>'.")
    if _is_admin_key(key, state):
        return Principal(tenant=None, is_admin=True, name=_actor(request, "admin"))
    prefix = key_prefix(key)
    active = state.routes.snapshot.keys.get(prefix) if prefix else None
    if active is None or not key_matches(key, active.key_hash):
        raise Unauthenticated("The API key is not valid. Check it, or ask an operator for one.")
    return Principal(tenant=active.tenant, is_admin=False, name=f"tenant:{active.tenant}")


async def require_admin(principal: Principal = Depends(authenticate)) -> Principal:
    if not principal.is_admin:
        raise Forbidden("This route needs the admin credential; tenant keys cannot use it.")
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
