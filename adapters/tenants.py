"""Tenants and their API keys.

A key is 32 random bytes, shown once and stored as its sha256. A fast hash is the right one
here: the key has 256 bits of entropy, so nothing is gained by a slow password hash, and
servers check keys on every request. Keys are found by their prefix and compared in
constant time.
"""

from __future__ import annotations

import builtins  # `list` in TenantBook is its method
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import schema
from .db import Database
from .errors import Conflict, NotFound
from .schema import ApiKey, Event, Tenant, tenant_row, utc, utcnow


@dataclass(frozen=True)
class TenantRecord:
    name: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: schema.Tenant) -> TenantRecord:
        return cls(row.name, utc(row.created_at), row.created_by)


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
        revoked = utc(row.revoked_at) if row.revoked_at else None
        return cls(tenant, row.prefix, row.label, utc(row.created_at), row.created_by, revoked)


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once; only its hash is stored
    record: KeyRecord


@dataclass(frozen=True)
class ActiveKey:
    key_hash: str
    tenant: str


KEY_SCHEME = "llk_"
PREFIX_CHARS = len(KEY_SCHEME) + 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key; None for anything that cannot be one of ours."""
    if not key.startswith(KEY_SCHEME) or not 40 <= len(key) <= 64:
        return None
    return key[:PREFIX_CHARS]


def key_matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), key_hash)


class TenantBook:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, *, actor: str) -> TenantRecord:
        try:
            with self.db.transaction() as session:
                tenant = Tenant(name=name, created_by=actor)
                session.add(tenant)
                session.flush()
                session.add(Event(kind="tenant_created", actor=actor, tenant_id=tenant.id))
                return TenantRecord.of(tenant)
        except IntegrityError:
            raise Conflict(f"The tenant '{name}' already exists.") from None

    def list(self) -> list[TenantRecord]:
        with self.db.reading() as session:
            tenants = session.scalars(select(Tenant).order_by(Tenant.name))
            return [TenantRecord.of(tenant) for tenant in tenants]

    def issue_key(self, tenant: str, *, actor: str, label: str | None = None) -> IssuedKey:
        key = KEY_SCHEME + secrets.token_urlsafe(32)
        with self.db.transaction() as session:
            owner = tenant_row(tenant, session=session)
            row = ApiKey(
                tenant_id=owner.id,
                prefix=key_prefix(key),
                key_hash=hash_key(key),
                label=label,
                created_by=actor,
            )
            session.add(row)
            session.flush()
            session.add(
                Event(
                    kind="key_issued",
                    actor=actor,
                    tenant_id=owner.id,
                    detail={"prefix": row.prefix, "label": label},
                )
            )
            return IssuedKey(key, KeyRecord.of(row, tenant))

    def list_keys(self, tenant: str) -> builtins.list[KeyRecord]:
        with self.db.reading() as session:
            owner = tenant_row(tenant, session=session)
            rows = session.scalars(
                select(ApiKey).where(ApiKey.tenant_id == owner.id).order_by(ApiKey.id)
            )
            return [KeyRecord.of(row, tenant) for row in rows]

    def revoke_key(
        self, tenant: str, prefix: str, *, actor: str, reason: str | None = None
    ) -> KeyRecord:
        with self.db.transaction() as session:
            owner = tenant_row(tenant, session=session)
            row = session.scalar(
                select(ApiKey).where(ApiKey.tenant_id == owner.id, ApiKey.prefix == prefix)
            )
            if row is None:
                raise NotFound(f"Tenant '{tenant}' has no key with prefix '{prefix}'.")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(
                    Event(
                        kind="key_revoked",
                        actor=actor,
                        tenant_id=owner.id,
                        reason=reason,
                        detail={"prefix": prefix},
                    )
                )
            return KeyRecord.of(row, tenant)
