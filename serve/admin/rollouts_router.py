"""Admin routes for an adapter's rollout: start, see, pause, resume, abort; translation only.

The rollout can also be read by the adapter's own tenant signed in to the console.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from loraloop.adapters.errors import Conflict
from loraloop.adapters.rollout_policy import RolloutPolicy

from ..auth import AdapterReader, Admin
from ..state import ServerState, get_state
from . import service
from .protocol import ReasonBody, RolloutPublic, RolloutStart

router = APIRouter(prefix="/admin/v1/adapters/{tenant}/{name}/rollout", tags=["admin"])
StateDep = Annotated[ServerState, Depends(get_state)]
ReasonDep = Annotated[ReasonBody | None, Body()]


@router.get("")
async def show_rollout(tenant: str, name: str, state: StateDep, _: AdapterReader) -> RolloutPublic:
    """The adapter's rollout under way, else its latest one."""
    return RolloutPublic.model_validate(
        await service.offload(state.registry.rollouts.current, f"{tenant}/{name}")
    )


@router.post("", status_code=201)
async def start_rollout(
    tenant: str, name: str, body: RolloutStart, state: StateDep, admin: Admin
) -> RolloutPublic:
    """Roll `version` out by the adapter's policy's plan (the default plan where the policy
    has none); any rollout under way is superseded."""
    adapter_id = f"{tenant}/{name}"
    policy = await service.offload(state.registry.adapters.policy, adapter_id)
    if policy.judge is None:
        raise Conflict(
            f"The policy of '{adapter_id}' names no judge; a rollout needs one to "
            "compare the versions' answers. Set policy.judge first."
        )
    return RolloutPublic.model_validate(
        await service.write(
            state,
            state.registry.rollouts.start,
            adapter_id,
            body.version,
            policy.rollout or RolloutPolicy(),
            actor=admin.name,
            reason=body.reason,
        )
    )


async def _operate(
    state: ServerState, change, adapter_id: str, admin: Admin, body: ReasonBody | None
) -> RolloutPublic:
    return RolloutPublic.model_validate(
        await service.write(
            state, change, adapter_id, actor=admin.name, reason=body.reason if body else None
        )
    )


@router.post("/pause")
async def pause_rollout(
    tenant: str, name: str, state: StateDep, admin: Admin, body: ReasonDep = None
) -> RolloutPublic:
    """No decisions until resumed; the traffic stays as it is."""
    return await _operate(state, state.registry.rollouts.pause, f"{tenant}/{name}", admin, body)


@router.post("/resume")
async def resume_rollout(
    tenant: str, name: str, state: StateDep, admin: Admin, body: ReasonDep = None
) -> RolloutPublic:
    return await _operate(state, state.registry.rollouts.resume, f"{tenant}/{name}", admin, body)


@router.post("/abort")
async def abort_rollout(
    tenant: str, name: str, state: StateDep, admin: Admin, body: ReasonDep = None
) -> RolloutPublic:
    """End it where it is: a canary share goes; a version already live stays live."""
    return await _operate(state, state.registry.rollouts.abort, f"{tenant}/{name}", admin, body)
