"""Wire types of the console's session routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

ActorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._@-]{1,64}$")]


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    name: ActorName | None = None  # who is signing in, for the history (admin only)


class SessionPublic(BaseModel):
    role: Literal["admin", "tenant"]
    tenant: str | None  # a tenant's session sees this tenant's adapters only
    actor: str  # how the history names what this session does
    csrf_token: str  # send as X-CSRF-Token with every change
    idle_minutes: int  # the session ends after this long unused
