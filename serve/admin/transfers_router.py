"""Admin routes for carrying adapters to a new base model; translation only.

A job names its target base by the name the trainers know it by (their transfer_targets):
this server cannot know those names, so it checks only their form, and the trainer that
takes the job fails it, naming the bases it knows, when the name is not one of them. An
adapter's jobs can also be read by its own tenant signed in to the console.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import Field

from ..auth import AdapterReader, Admin
from ..state import ServerState, get_state
from . import service
from .protocol import BaseName, MigrationCreate, MigrationPublic, TransferCreate, TransferPublic

router = APIRouter(prefix="/admin/v1", tags=["admin"])
StateDep = Annotated[ServerState, Depends(get_state)]
TRANSFERS = "/adapters/{tenant}/{name}/transfers"
MAX_IDS = 500
# Ids are 64-bit in the database: a larger one is a 400 naming the parameter, never a 500.
JobId = Annotated[int, Field(ge=1, le=2**62)]


@router.post(TRANSFERS, status_code=201)
async def queue_transfer(
    tenant: str, name: str, body: TransferCreate, state: StateDep, admin: Admin, response: Response
) -> TransferPublic:
    """Carry a version (default: the live one here) to another base. The same transfer
    queued, running or passed already: 200 and that job."""
    record, created = await service.offload(
        state.registry.transfers.queue,
        f"{tenant}/{name}",
        body.to_base,
        actor=admin.name,
        version=body.version,
        reason=body.reason,
    )
    response.status_code = 201 if created else 200
    return TransferPublic.model_validate(record)


@router.get(TRANSFERS)
async def list_transfers(
    tenant: str,
    name: str,
    state: StateDep,
    reader: AdapterReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TransferPublic]:
    jobs = await service.offload(state.registry.transfers.jobs, f"{tenant}/{name}", limit=limit)
    return [TransferPublic.model_validate(job).seen_by(reader.tenant) for job in jobs]


@router.get(TRANSFERS + "/{job_id}")
async def show_transfer(
    tenant: str,
    name: str,
    state: StateDep,
    reader: AdapterReader,
    job_id: Annotated[int, Path(ge=1, le=2**62)],
) -> TransferPublic:
    job = await service.offload(state.registry.transfers.job, f"{tenant}/{name}", job_id)
    return TransferPublic.model_validate(job).seen_by(reader.tenant)


@router.post("/base-migrations", status_code=201)
async def migrate(body: MigrationCreate, state: StateDep, admin: Admin) -> MigrationPublic:
    """A transfer job for every adapter with a live version on this server's base model;
    jobs already queued, running or passed are returned as they are."""
    jobs = await service.offload(
        state.registry.transfers.queue_live, body.to_base, actor=admin.name, reason=body.reason
    )
    return MigrationPublic(
        to_base=body.to_base,
        queued=[job.id for job, created in jobs if created],
        jobs=[TransferPublic.model_validate(job) for job, _ in jobs],
    )


@router.get("/transfers")
async def find_transfers(
    state: StateDep,
    _: Admin,
    job_id: Annotated[list[JobId] | None, Query(alias="id", max_length=MAX_IDS)] = None,
    to_base: BaseName | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_IDS)] = 100,
) -> list[TransferPublic]:
    """Jobs of every adapter, newest first: those named by `id` (repeatable), or those to
    `to_base`."""
    jobs = await service.offload(
        state.registry.transfers.find, ids=job_id, to_base=to_base, limit=limit
    )
    return [TransferPublic.model_validate(job) for job in jobs]
