"""The registry as a server sees it: pointers, servable versions and active keys.

Read in one transaction, so the revision, the pointers and the keys agree with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select

from .db import Database
from .pointers import UNFINISHED_ROLLOUT
from .rollouts.book import RolloutRecord
from .schema import (
    Adapter,
    AdapterVersion,
    ApiKey,
    LivePointer,
    RegistryRevision,
    Rollout,
    Tenant,
)
from .tenants import ActiveKey
from .versions import AdapterRecord, VersionRecord


@dataclass(frozen=True)
class ServingView:
    """Everything a server of one base model routes and authenticates by, read in one
    transaction: the adapters' pointers on that base, and only versions made for it."""

    revision: int
    adapters: tuple[AdapterRecord, ...]
    servable: tuple[VersionRecord, ...]  # versions of this base a request may reach
    keys: Mapping[str, ActiveKey]  # key prefix -> unrevoked key
    rollouts: tuple[RolloutRecord, ...] = ()  # active and paused ones on this base
    # (adapter id, version) -> the fingerprint of the other base a version was made for:
    # never routed here.
    elsewhere: Mapping[tuple[str, int], str] = field(default_factory=dict)
    base: str = ""  # the fingerprint of the base model this view was read for


def read_serving_view(db: Database, base: str) -> ServingView:
    """`base`: the fingerprint of the server's base model."""
    with db.reading() as session:
        revision = session.scalar(select(RegistryRevision.revision)) or 0
        adapters = session.execute(
            select(Adapter, Tenant.name, LivePointer)
            .join(Tenant)
            .outerjoin(
                LivePointer,
                (LivePointer.adapter_id == Adapter.id) & (LivePointer.base_fingerprint == base),
            )
        ).all()
        adapter_ids = {row.id: f"{tenant}/{row.name}" for row, tenant, _ in adapters}
        versions = session.scalars(
            select(AdapterVersion).where(AdapterVersion.status != "rejected")
        ).all()
        rollouts = session.scalars(
            select(Rollout)
            .where(Rollout.status.in_(UNFINISHED_ROLLOUT), Rollout.base_fingerprint == base)
            .order_by(Rollout.id)
        )
        keys = session.execute(
            select(ApiKey.prefix, ApiKey.key_hash, Tenant.name)
            .join(Tenant)
            .where(ApiKey.revoked_at.is_(None))
        )
        return ServingView(
            revision=revision,
            adapters=tuple(
                AdapterRecord.of(row, adapter_ids[row.id], None, pointer)
                for row, _, pointer in adapters
            ),
            servable=tuple(
                VersionRecord.of(v, adapter_ids[v.adapter_id])
                for v in versions
                if v.base_fingerprint == base
            ),
            keys={prefix: ActiveKey(key_hash, tenant) for prefix, key_hash, tenant in keys},
            rollouts=tuple(RolloutRecord.of(r, adapter_ids[r.adapter_id]) for r in rollouts),
            elsewhere={
                (adapter_ids[v.adapter_id], v.number): v.base_fingerprint
                for v in versions
                if v.base_fingerprint != base
            },
            base=base,
        )
