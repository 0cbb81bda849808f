"""The registry as a server sees it: pointers, servable versions and active keys.

Read in one transaction, so the revision, the pointers and the keys agree with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select

from .db import Database
from .schema import Adapter, AdapterVersion, ApiKey, RegistryRevision, Tenant
from .tenants import ActiveKey
from .versions import AdapterRecord, VersionRecord


@dataclass(frozen=True)
class ServingView:
    """Everything a server routes and authenticates by, read in one transaction."""

    revision: int
    adapters: tuple[AdapterRecord, ...]
    servable: tuple[VersionRecord, ...]  # every version a request may reach (not rejected)
    keys: Mapping[str, ActiveKey]  # key prefix -> unrevoked key



def read_serving_view(db: Database) -> ServingView:
    with db.reading() as session:
        revision = session.scalar(select(RegistryRevision.revision)) or 0
        adapters = session.execute(select(Adapter, Tenant.name).join(Tenant)).all()
        adapter_ids = {row.id: f"{tenant}/{row.name}" for row, tenant in adapters}
        versions = session.scalars(
            select(AdapterVersion).where(AdapterVersion.status != "rejected")
        )
        keys = session.execute(
            select(ApiKey.prefix, ApiKey.key_hash, Tenant.name)
            .join(Tenant)
            .where(ApiKey.revoked_at.is_(None))
        )
        return ServingView(
            revision=revision,
            adapters=tuple(AdapterRecord.of(row, adapter_ids[row.id], None) for row, _ in adapters),
            servable=tuple(VersionRecord.of(v, adapter_ids[v.adapter_id]) for v in versions),
            keys={prefix: ActiveKey(key_hash, tenant) for prefix, key_hash, tenant in keys},
        )
