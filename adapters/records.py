"""What the registry hands out: plain immutable records, detached from database sessions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from . import schema

VersionStatus = Literal["candidate", "live", "retired", "rejected"]
EventKind = Literal[
    "tenant_created", "key_issued", "key_revoked", "adapter_created", "register",
    "promote", "rollback", "canary_set", "canary_cleared", "reject", "retire", "policy_set",
]


def _utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; every time the registry writes is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class TenantRecord:
    name: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: schema.Tenant) -> TenantRecord:
        return cls(row.name, _utc(row.created_at), row.created_by)


@dataclass(frozen=True)
class KeyRecord:
    tenant: str
    prefix: str
    label: str | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: schema.ApiKey, tenant: str) -> KeyRecord:
        revoked = _utc(row.revoked_at) if row.revoked_at else None
        return cls(tenant, row.prefix, row.label, _utc(row.created_at), row.created_by, revoked)


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once; only its hash is stored
    record: KeyRecord


@dataclass(frozen=True)
class VersionRecord:
    adapter_id: str  # tenant/name
    number: int
    status: VersionStatus
    lora_id: int  # the engine's LoRA id: unique per version, never reused
    content_hash: str
    storage_key: str
    base_fingerprint: str
    base_override_reason: str | None
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    size_bytes: int
    source: str
    parent_version: int | None
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: schema.AdapterVersion, adapter_id: str) -> VersionRecord:
        return cls(
            adapter_id, row.number, row.status, row.id, row.content_hash, row.storage_key,
            row.base_fingerprint, row.base_override_reason, row.rank, row.alpha,
            tuple(row.target_modules), row.size_bytes, row.source, row.parent_version,
            dict(row.metrics), dict(row.tags), _utc(row.created_at), row.created_by,
        )


@dataclass(frozen=True)
class AdapterRecord:
    adapter_id: str
    description: str | None
    created_at: datetime
    created_by: str
    live_version: int | None
    canary_version: int | None
    canary_percent: int | None
    latest_version: int | None
    records_completions: bool = False  # its training policy asks to keep completions

    @classmethod
    def of(cls, row: schema.Adapter, adapter_id: str, latest: int | None) -> AdapterRecord:
        records = bool((row.policy or {}).get("record_completions", False))
        return cls(adapter_id, row.description, _utc(row.created_at), row.created_by,
                   row.live_version, row.canary_version, row.canary_percent, latest, records)


@dataclass(frozen=True)
class EventRecord:
    id: int
    kind: EventKind
    at: datetime
    actor: str
    tenant: str | None
    adapter_id: str | None
    from_version: int | None
    to_version: int | None
    reason: str | None
    detail: Mapping[str, object]

    @classmethod
    def of(cls, row: schema.Event, tenant: str | None, adapter_id: str | None) -> EventRecord:
        return cls(row.id, row.kind, _utc(row.at), row.actor, tenant, adapter_id,
                   row.from_version, row.to_version, row.reason, dict(row.detail))


@dataclass(frozen=True)
class ActiveKey:
    key_hash: str
    tenant: str


@dataclass(frozen=True)
class RoutingState:
    """Everything a server routes and authenticates by, read in one transaction."""

    revision: int
    adapters: tuple[AdapterRecord, ...]
    servable: tuple[VersionRecord, ...]  # every version a request may reach (not rejected)
    keys: Mapping[str, ActiveKey]  # key prefix -> unrevoked key
