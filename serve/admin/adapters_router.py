"""Admin routes for adapters and their versions; translation only.

Changes need the admin credential. Reads also answer a tenant signed in to the console, for
its own adapters only (auth.adapter_reader).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Path, Query, Response, UploadFile

from ..auth import AdapterReader, AdaptersReader, Admin
from ..state import ServerState, get_state
from . import service
from .protocol import (
    AdapterCreate,
    AdapterPublic,
    CanaryRequest,
    EventPublic,
    PromoteRequest,
    ReasonBody,
    RollbackRequest,
    VersionCreate,
    VersionPublic,
    version_form,
)

PREFIX = "/admin/v1/adapters"
router = APIRouter(prefix=PREFIX, tags=["admin"])
StateDep = Annotated[ServerState, Depends(get_state)]
ReasonDep = Annotated[ReasonBody | None, Body()]
VersionPath = Annotated[int, Path(ge=1, le=10**9)]
ONE = "/{tenant}/{name}"
VERSIONS = ONE + "/versions"
# Where adapter files are uploaded: the one route whose body may be as large as an adapter.
UPLOAD_ROUTE = PREFIX + VERSIONS


def _reason(body: ReasonBody | None) -> str | None:
    return body.reason if body else None


@router.post("", status_code=201)
async def create_adapter(body: AdapterCreate, state: StateDep, admin: Admin) -> AdapterPublic:
    record = await service.write(
        state,
        state.registry.adapters.create,
        body.id,
        actor=admin.name,
        description=body.description,
    )
    return AdapterPublic.model_validate(record)


@router.get("")
async def list_adapters(
    state: StateDep, reader: AdaptersReader, tenant: str | None = None
) -> list[AdapterPublic]:
    if reader.tenant is not None and tenant not in (None, reader.tenant):
        return []  # another tenant's adapters: as for a tenant that does not exist
    adapters = await service.offload(state.registry.adapters.list, reader.tenant or tenant)
    return [AdapterPublic.model_validate(a) for a in adapters]


@router.get(ONE)
async def show_adapter(tenant: str, name: str, state: StateDep, _: AdapterReader) -> AdapterPublic:
    adapter = await service.offload(state.registry.adapters.get, f"{tenant}/{name}")
    return AdapterPublic.model_validate(adapter)


@router.post(VERSIONS, status_code=201)
async def register_version(
    tenant: str,
    name: str,
    state: StateDep,
    admin: Admin,
    response: Response,
    form: Annotated[VersionCreate, Depends(version_form)],
    file: Annotated[list[UploadFile] | None, File()] = None,
) -> VersionPublic:
    """Upload `adapter_config.json` and `adapter_model.safetensors` as `file` parts, or name
    a directory under an allowed root in `path`. The same files again: 200 and that version."""
    record, created = await service.register_version(
        state, f"{tenant}/{name}", form, file or [], admin.name
    )
    response.status_code = 201 if created else 200
    return VersionPublic.model_validate(record)


@router.get(VERSIONS)
async def list_versions(
    tenant: str, name: str, state: StateDep, reader: AdapterReader
) -> list[VersionPublic]:
    return [
        VersionPublic.model_validate(v).seen_by(reader.tenant)
        for v in await service.offload(state.registry.adapters.versions, f"{tenant}/{name}")
    ]


@router.get(VERSIONS + "/{version}")
async def show_version(
    tenant: str, name: str, version: VersionPath, state: StateDep, reader: AdapterReader
) -> VersionPublic:
    return VersionPublic.model_validate(
        await service.offload(state.registry.adapters.version, f"{tenant}/{name}", version)
    ).seen_by(reader.tenant)


@router.post(ONE + "/promote")
async def promote(
    tenant: str, name: str, body: PromoteRequest, state: StateDep, admin: Admin
) -> AdapterPublic:
    return AdapterPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.promote,
            f"{tenant}/{name}",
            body.version,
            actor=admin.name,
            expected_live=body.expected_live,
            reason=body.reason,
        )
    )


@router.post(ONE + "/rollback")
async def rollback(
    tenant: str,
    name: str,
    state: StateDep,
    admin: Admin,
    body: Annotated[RollbackRequest | None, Body()] = None,
) -> AdapterPublic:
    body = body or RollbackRequest()
    return AdapterPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.rollback,
            f"{tenant}/{name}",
            actor=admin.name,
            to_version=body.to_version,
            reason=body.reason,
        )
    )


@router.put(ONE + "/canary")
async def set_canary(
    tenant: str, name: str, body: CanaryRequest, state: StateDep, admin: Admin
) -> AdapterPublic:
    return AdapterPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.set_canary,
            f"{tenant}/{name}",
            body.version,
            body.percent,
            actor=admin.name,
            reason=body.reason,
        )
    )


@router.delete(ONE + "/canary")
async def clear_canary(
    tenant: str,
    name: str,
    state: StateDep,
    admin: Admin,
    reason: Annotated[str | None, Query(max_length=1000)] = None,
) -> AdapterPublic:
    return AdapterPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.clear_canary,
            f"{tenant}/{name}",
            actor=admin.name,
            reason=reason,
        )
    )


@router.post(VERSIONS + "/{version}/reject")
async def reject(
    tenant: str,
    name: str,
    version: VersionPath,
    state: StateDep,
    admin: Admin,
    body: ReasonDep = None,
) -> VersionPublic:
    return VersionPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.reject,
            f"{tenant}/{name}",
            version,
            actor=admin.name,
            reason=_reason(body),
        )
    )


@router.post(VERSIONS + "/{version}/retire")
async def retire(
    tenant: str,
    name: str,
    version: VersionPath,
    state: StateDep,
    admin: Admin,
    body: ReasonDep = None,
) -> VersionPublic:
    return VersionPublic.model_validate(
        await service.write(
            state,
            state.registry.adapters.retire,
            f"{tenant}/{name}",
            version,
            actor=admin.name,
            reason=_reason(body),
        )
    )


@router.get(ONE + "/history")
async def history(
    tenant: str,
    name: str,
    state: StateDep,
    reader: AdapterReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventPublic]:
    events = await service.offload(state.registry.adapters.history, f"{tenant}/{name}", limit=limit)
    return [EventPublic.model_validate(e).seen_by(reader.tenant) for e in events]
