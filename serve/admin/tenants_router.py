"""Admin routes for tenants and their API keys; translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response

from ..auth import Admin, require_admin
from ..state import ServerState, get_state
from . import service
from .protocol import KeyCreate, KeyIssuedPublic, KeyPublic, ReasonBody, TenantCreate, TenantPublic

router = APIRouter(
    prefix="/admin/v1/tenants", tags=["admin"], dependencies=[Depends(require_admin)]
)
StateDep = Annotated[ServerState, Depends(get_state)]


@router.post("", status_code=201)
async def create_tenant(body: TenantCreate, state: StateDep, admin: Admin) -> TenantPublic:
    record = await service.write(state, state.registry.tenants.create, body.name, actor=admin.name)
    return TenantPublic.model_validate(record)


@router.get("")
async def list_tenants(state: StateDep) -> list[TenantPublic]:
    tenants = await service.offload(state.registry.tenants.list)
    return [TenantPublic.model_validate(t) for t in tenants]


@router.post("/{tenant}/keys", status_code=201)
async def issue_key(
    tenant: str,
    state: StateDep,
    admin: Admin,
    response: Response,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> KeyIssuedPublic:
    response.headers["Cache-Control"] = "no-store"  # the key, shown this once
    label = body.label if body else None
    issued = await service.write(
        state, state.registry.tenants.issue_key, tenant, actor=admin.name, label=label
    )
    return KeyIssuedPublic.issued(issued)


@router.get("/{tenant}/keys")
async def list_keys(tenant: str, state: StateDep) -> list[KeyPublic]:
    keys = await service.offload(state.registry.tenants.list_keys, tenant)
    return [KeyPublic.model_validate(k) for k in keys]


@router.post("/{tenant}/keys/{prefix}/revoke")
async def revoke_key(
    tenant: str,
    prefix: str,
    state: StateDep,
    admin: Admin,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> KeyPublic:
    record = await service.write(
        state,
        state.registry.tenants.revoke_key,
        tenant,
        prefix,
        actor=admin.name,
        reason=body.reason if body else None,
    )
    return KeyPublic.model_validate(record)
