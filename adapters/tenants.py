"""Tenants and their API keys.

A key is 32 random bytes, shown once and stored as its sha256. A fast hash is the right one
here: the key has 256 bits of entropy, so nothing is gained by a slow password hash, and
servers check keys on every request. Keys are found by their prefix and compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database
from .errors import Conflict, NotFound
from .records import IssuedKey, KeyRecord, TenantRecord
from .schema import ApiKey, Event, Tenant, utcnow

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


def tenant_row(name: str, *, session: Session) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"There is no tenant '{name}'. Create it first: loraloop tenants create.")
    return tenant


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
            row = ApiKey(tenant_id=owner.id, prefix=key_prefix(key), key_hash=hash_key(key),
                         label=label, created_by=actor)
            session.add(row)
            session.flush()
            session.add(Event(kind="key_issued", actor=actor, tenant_id=owner.id,
                              detail={"prefix": row.prefix, "label": label}))
            return IssuedKey(key, KeyRecord.of(row, tenant))

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        with self.db.reading() as session:
            owner = tenant_row(tenant, session=session)
            rows = session.scalars(
                select(ApiKey).where(ApiKey.tenant_id == owner.id).order_by(ApiKey.id)
            )
            return [KeyRecord.of(row, tenant) for row in rows]

    def revoke_key(self, tenant: str, prefix: str, *, actor: str,
                   reason: str | None = None) -> KeyRecord:
        with self.db.transaction() as session:
            owner = tenant_row(tenant, session=session)
            row = session.scalar(
                select(ApiKey).where(ApiKey.tenant_id == owner.id, ApiKey.prefix == prefix)
            )
            if row is None:
                raise NotFound(f"Tenant '{tenant}' has no key with prefix '{prefix}'.")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(Event(kind="key_revoked", actor=actor, tenant_id=owner.id,
                                  reason=reason, detail={"prefix": prefix}))
            return KeyRecord.of(row, tenant)
