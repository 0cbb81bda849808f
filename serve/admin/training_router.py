"""Admin routes for an adapter's training policy and its training runs; translation only.

The runs can also be read by the adapter's own tenant signed in to the console.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from loraloop.adapters.training_policy import TrainingPolicy

from ..auth import AdapterReader, Admin
from ..state import ServerState, get_state
from . import service
from .policies import POLICY_BODY, admit_policy
from .protocol import ReasonBody, RunPublic

router = APIRouter(prefix="/admin/v1/adapters/{tenant}/{name}", tags=["admin"])
StateDep = Annotated[ServerState, Depends(get_state)]


@router.get("/policy")
async def show_policy(tenant: str, name: str, state: StateDep, _: Admin) -> TrainingPolicy:
    return await service.offload(state.registry.adapters.policy, f"{tenant}/{name}")


@router.put("/policy", openapi_extra=POLICY_BODY)
async def set_policy(
    tenant: str, name: str, request: Request, state: StateDep, admin: Admin
) -> TrainingPolicy:
    policy = await service.offload(
        admit_policy, await request.body(), state.settings.judge_key_variables
    )
    return await service.write(
        state, state.registry.adapters.set_policy, f"{tenant}/{name}", policy, actor=admin.name
    )


@router.post("/training-runs", status_code=201)
async def queue_run(
    tenant: str,
    name: str,
    state: StateDep,
    admin: Admin,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> RunPublic:
    """Ask the trainer to run for this adapter now, whatever its policy's thresholds."""
    record = await service.offload(
        state.registry.training.queue,
        f"{tenant}/{name}",
        actor=admin.name,
        reason=body.reason if body else None,
    )
    return RunPublic.model_validate(record)


@router.get("/training-runs")
async def list_runs(
    tenant: str,
    name: str,
    state: StateDep,
    _: AdapterReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[RunPublic]:
    runs = await service.offload(state.registry.training.runs, f"{tenant}/{name}", limit=limit)
    return [RunPublic.model_validate(run) for run in runs]


@router.get("/training-runs/{run_id}")
async def show_run(
    tenant: str,
    name: str,
    state: StateDep,
    _: AdapterReader,
    run_id: Annotated[int, Path(ge=1, le=2**62)],
) -> RunPublic:
    run = await service.offload(state.registry.training.run, f"{tenant}/{name}", run_id)
    return RunPublic.model_validate(run)
