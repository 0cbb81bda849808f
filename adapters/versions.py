"""Adapters and their immutable versions, an operator's moves of their pointers, and history.

How the pointers move is pointers.py's; a move here is an operator's promote, rollback or
canary, checked and recorded.

Every public method that changes something is one transaction that also writes its history
row (adapters/db.py serializes them). Helpers take the session as a keyword and never commit.
"""

from __future__ import annotations

import builtins  # `list` in AdapterBook is its method
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import schema
from .base_model import BaseModelInfo
from .db import Database
from .errors import Conflict, InvalidArgument
from .history import log_event
from .pointers import (
    beside_live,
    clear_canary,
    current_pointer,
    end_unfinished_rollout,
    make_live,
    pointer_row,
    previous_live,
    unfinished_rollout,
)
from .schema import (
    Adapter,
    AdapterVersion,
    Event,
    EventKind,
    LivePointer,
    Rollout,
    Tenant,
    VersionStatus,
    adapter_row,
    split_adapter_id,
    tenant_row,
    utc,
    version_row,
)
from .store import WeightStore
from .training_policy import TrainingPolicy
from .validation import validate_adapter


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
            adapter_id,
            row.number,
            row.status,
            row.id,
            row.content_hash,
            row.storage_key,
            row.base_fingerprint,
            row.base_override_reason,
            row.rank,
            row.alpha,
            tuple(row.target_modules),
            row.size_bytes,
            row.source,
            row.parent_version,
            dict(row.metrics),
            dict(row.tags),
            utc(row.created_at),
            row.created_by,
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
    def of(
        cls, row: schema.Adapter, adapter_id: str, latest: int | None, pointer: LivePointer | None
    ) -> AdapterRecord:
        """`pointer`: the adapter's pointers on the reader's base model (None: none set)."""
        records = TrainingPolicy.stored(row.policy).record_completions
        live, canary, percent = (
            (pointer.live_version, pointer.canary_version, pointer.canary_percent)
            if pointer
            else (None, None, None)
        )
        return cls(
            adapter_id,
            row.description,
            utc(row.created_at),
            row.created_by,
            live,
            canary,
            percent,
            latest,
            records,
        )


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
        return cls(
            row.id,
            row.kind,
            utc(row.at),
            row.actor,
            tenant,
            adapter_id,
            row.from_version,
            row.to_version,
            row.reason,
            dict(row.detail),
        )


NO_LIVE_VERSION = 0  # as `expected_live`: the caller expects no version to be live yet


@dataclass(frozen=True)
class RegistrationPolicy:
    """What a version must satisfy to be registered, from the server's settings."""

    base: BaseModelInfo
    max_rank: int
    max_bytes: int


@dataclass(frozen=True)
class NewVersion:
    source: str = "upload"
    parent_version: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    base_override_reason: str | None = None  # set: base_model_name_or_path may differ
    reason: str | None = None


def _latest_number(adapter: Adapter, *, session: Session) -> int | None:
    return session.scalar(
        select(func.max(AdapterVersion.number)).where(AdapterVersion.adapter_id == adapter.id)
    )


def _record(adapter: Adapter, adapter_id: str, base: str, *, session: Session) -> AdapterRecord:
    pointer = current_pointer(adapter, base, session=session)
    return AdapterRecord.of(adapter, adapter_id, _latest_number(adapter, session=session), pointer)


def _refuse_rejecting_the_fallback(rollout: Rollout, adapter_id: str, number: int) -> None:
    """A rollout's previous version may not be rejected while the rollout goes on. In its
    watch the previous version is what the shadows compare the new live one with and what a
    rollback makes live again: servers route no rejected version, so rejecting it would blind
    the watch and leave its rollback nothing to return to. The operator ends the rollout
    (abort, or a promote or rollback), then rejects."""
    if rollout.baseline_version == number:
        raise Conflict(
            f"Version {number} of '{adapter_id}' is the previous version of rollout "
            f"{rollout.id}, which compares the new version with it and rolls back "
            "to it; abort the rollout (or wait for it to end) before you reject "
            "it."
        )


def _operator_change(what: str, actor: str, reason: str | None) -> str:
    return f"{what} by {actor}" + (f": {reason}" if reason else "")


class AdapterBook:
    """The registry's adapters as one base model's processes see them: pointers (live,
    canary) read and set are this base's, unless a change names a version of another."""

    def __init__(self, db: Database, store: WeightStore, policy: RegistrationPolicy) -> None:
        self.db, self.store, self.registration_policy = db, store, policy
        self.base = policy.base.fingerprint

    # -- reading -------------------------------------------------------------------------

    def list(self, tenant: str | None = None) -> list[AdapterRecord]:
        query = select(Adapter, Tenant.name).join(Tenant).order_by(Tenant.name, Adapter.name)
        if tenant is not None:
            query = query.where(Tenant.name == tenant)
        with self.db.reading() as session:
            return [
                _record(row, f"{owner}/{row.name}", self.base, session=session)
                for row, owner in session.execute(query)
            ]

    def get(self, adapter_id: str) -> AdapterRecord:
        with self.db.reading() as session:
            return _record(
                adapter_row(adapter_id, session=session), adapter_id, self.base, session=session
            )

    def versions(self, adapter_id: str) -> builtins.list[VersionRecord]:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(AdapterVersion)
                .where(AdapterVersion.adapter_id == adapter.id)
                .order_by(AdapterVersion.number)
            )
            return [VersionRecord.of(row, adapter_id) for row in rows]

    def version(self, adapter_id: str, number: int) -> VersionRecord:
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            row = version_row(adapter, adapter_id, number, session=session)
            return VersionRecord.of(row, adapter_id)

    def history(self, adapter_id: str, *, limit: int = 100) -> builtins.list[EventRecord]:
        """The newest `limit` events, oldest first."""
        tenant = adapter_id.split("/", 1)[0]
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            rows = session.scalars(
                select(Event)
                .where(Event.adapter_id == adapter.id)
                .order_by(Event.id.desc())
                .limit(limit)
            )
            return [EventRecord.of(row, tenant, adapter_id) for row in reversed(list(rows))]

    def path_of(self, version: VersionRecord) -> Path:
        return self.store.path_of(version.storage_key)

    # -- changing ------------------------------------------------------------------------

    def create(
        self, adapter_id: str, *, actor: str, description: str | None = None
    ) -> AdapterRecord:
        tenant, name = split_adapter_id(adapter_id)
        with self.db.transaction() as session:
            owner = tenant_row(tenant, session=session)
            exists = session.scalar(
                select(Adapter.id).where(Adapter.tenant_id == owner.id, Adapter.name == name)
            )
            if exists is not None:
                raise Conflict(f"The adapter '{adapter_id}' already exists.")
            adapter = Adapter(
                tenant_id=owner.id, name=name, description=description, created_by=actor
            )
            session.add(adapter)
            session.flush()
            log_event("adapter_created", adapter, actor, session=session)
            return _record(adapter, adapter_id, self.base, session=session)

    def register(
        self,
        adapter_id: str,
        files: Mapping[str, Path],
        new: NewVersion,
        *,
        actor: str,
        within: Callable[[Session, VersionRecord], None] | None = None,
    ) -> tuple[VersionRecord, bool]:
        """Validate, store, then insert the version row. False: these files were already
        registered for this adapter, and that version is returned. `within` runs inside the
        same transaction (the trainer marks its feedback consumed there)."""
        self.get(adapter_id)  # an unknown adapter is reported before a costly validation
        facts = validate_adapter(
            files,
            self.registration_policy.base,
            max_rank=self.registration_policy.max_rank,
            max_bytes=self.registration_policy.max_bytes,
            base_model_override=new.base_override_reason is not None,
        )
        stored = self.store.put(files)
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            existing = session.scalar(
                select(AdapterVersion).where(
                    AdapterVersion.adapter_id == adapter.id,
                    AdapterVersion.content_hash == stored.content_hash,
                )
            )
            if existing is not None:
                record = VersionRecord.of(existing, adapter_id)
                if within is not None:
                    within(session, record)
                return record, False
            if new.parent_version is not None:
                version_row(adapter, adapter_id, new.parent_version, session=session)
            version = AdapterVersion(
                adapter_id=adapter.id,
                number=(_latest_number(adapter, session=session) or 0) + 1,
                status="candidate",
                content_hash=stored.content_hash,
                storage_key=stored.storage_key,
                base_fingerprint=self.registration_policy.base.fingerprint,
                base_override_reason=new.base_override_reason,
                rank=facts.rank,
                alpha=facts.alpha,
                target_modules=list(facts.target_modules),
                size_bytes=facts.size_bytes,
                source=new.source,
                parent_version=new.parent_version,
                metrics=dict(new.metrics),
                tags=dict(new.tags),
                created_by=actor,
            )
            session.add(version)
            session.flush()
            log_event(
                "register",
                adapter,
                actor,
                session=session,
                to_version=version.number,
                reason=new.reason,
                content_hash=stored.content_hash,
                source=new.source,
                base=version.base_fingerprint,
            )
            record = VersionRecord.of(version, adapter_id)
            if within is not None:
                within(session, record)
            return record, True

    def policy(self, adapter_id: str) -> TrainingPolicy:
        """The adapter's training policy (the defaults where none was set)."""
        with self.db.reading() as session:
            return TrainingPolicy.stored(adapter_row(adapter_id, session=session).policy)

    def set_policy(
        self, adapter_id: str, policy: TrainingPolicy, *, actor: str, reason: str | None = None
    ) -> TrainingPolicy:
        stored = policy.model_dump(mode="json")
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            adapter.policy = stored
            log_event("policy_set", adapter, actor, session=session, reason=reason, policy=stored)
            return policy

    def promote(
        self,
        adapter_id: str,
        number: int,
        *,
        actor: str,
        expected_live: int | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Make `number` live. With `expected_live` (NO_LIVE_VERSION for none), only if that
        is still the live version: compare-and-swap for callers that decided on stale data."""
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            target = version_row(adapter, adapter_id, number, session=session)
            # Live on the version's own base: an operator may promote a version made for a
            # new base model from any server.
            pointer = pointer_row(adapter, target.base_fingerprint, session=session)
            live = pointer.live_version or NO_LIVE_VERSION
            if expected_live is not None and expected_live != live:
                raise Conflict(
                    f"The live version of '{adapter_id}' is {live or 'none'}, not "
                    f"{expected_live or 'none'}; re-read it and decide again."
                )
            if target.status == "rejected":
                raise Conflict(
                    f"Version {number} of '{adapter_id}' was rejected; it cannot "
                    "be promoted. Register a new version."
                )
            if pointer.live_version != number:
                end_unfinished_rollout(
                    adapter,
                    pointer,
                    actor,
                    _operator_change(f"promote of version {number}", actor, reason),
                    session=session,
                )
                make_live(
                    adapter,
                    pointer,
                    adapter_id,
                    target,
                    actor,
                    kind="promote",
                    reason=reason,
                    session=session,
                )
            return _record(adapter, adapter_id, self.base, session=session)

    def rollback(
        self,
        adapter_id: str,
        *,
        actor: str,
        to_version: int | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Make an earlier version live again: the one live before the current one, or
        `to_version`."""
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            base = (
                self.base
                if to_version is None
                else version_row(adapter, adapter_id, to_version, session=session).base_fingerprint
            )
            pointer = pointer_row(adapter, base, session=session)
            if pointer.live_version is None:
                raise Conflict(f"'{adapter_id}' has no live version to roll back from.")
            number = to_version or previous_live(adapter, pointer, adapter_id, session=session)
            if number == pointer.live_version:
                raise Conflict(f"Version {number} of '{adapter_id}' is already live.")
            target = version_row(adapter, adapter_id, number, session=session)
            if target.status == "rejected":
                raise Conflict(
                    f"Version {number} of '{adapter_id}' was rejected; "
                    "roll back to another version."
                )
            end_unfinished_rollout(
                adapter,
                pointer,
                actor,
                _operator_change(f"rollback to version {number}", actor, reason),
                session=session,
            )
            make_live(
                adapter,
                pointer,
                adapter_id,
                target,
                actor,
                kind="rollback",
                reason=reason,
                session=session,
            )
            return _record(adapter, adapter_id, self.base, session=session)

    def set_canary(
        self, adapter_id: str, number: int, percent: int, *, actor: str, reason: str | None = None
    ) -> AdapterRecord:
        if not 1 <= percent <= 99:
            raise InvalidArgument(f"The canary percent must be 1 to 99, not {percent}.")
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            _, pointer = beside_live(adapter, adapter_id, number, "a canary", session=session)
            end_unfinished_rollout(
                adapter,
                pointer,
                actor,
                _operator_change(f"canary of version {number} at {percent}%", actor, reason),
                session=session,
            )
            log_event(
                "canary_set",
                adapter,
                actor,
                session=session,
                from_version=pointer.canary_version,
                to_version=number,
                reason=reason,
                percent=percent,
            )
            pointer.canary_version, pointer.canary_percent = number, percent
            return _record(adapter, adapter_id, self.base, session=session)

    def clear_canary(
        self, adapter_id: str, *, actor: str, reason: str | None = None
    ) -> AdapterRecord:
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            pointer = pointer_row(adapter, self.base, session=session)
            if pointer.canary_version is not None:
                end_unfinished_rollout(
                    adapter,
                    pointer,
                    actor,
                    _operator_change("canary cleared", actor, reason),
                    session=session,
                )
            clear_canary(adapter, pointer, actor, reason or "cleared", session=session)
            return _record(adapter, adapter_id, self.base, session=session)

    def reject(
        self, adapter_id: str, number: int, *, actor: str, reason: str | None = None
    ) -> VersionRecord:
        return self._take_out(adapter_id, number, "rejected", "reject", actor, reason)

    def retire(
        self, adapter_id: str, number: int, *, actor: str, reason: str | None = None
    ) -> VersionRecord:
        return self._take_out(adapter_id, number, "retired", "retire", actor, reason)

    def _take_out(
        self,
        adapter_id: str,
        number: int,
        status: VersionStatus,
        kind: EventKind,
        actor: str,
        reason: str | None,
    ) -> VersionRecord:
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            version = version_row(adapter, adapter_id, number, session=session)
            pointer = pointer_row(adapter, version.base_fingerprint, session=session)
            if number == pointer.live_version:
                raise Conflict(
                    f"Version {number} of '{adapter_id}' is live; promote or roll "
                    f"back to another version before you {kind} it."
                )
            if version.status == "rejected" and status == "retired":
                raise Conflict(f"Version {number} of '{adapter_id}' was rejected already.")
            if version.status != status:
                rollout = unfinished_rollout(
                    adapter, pointer.base_fingerprint, session=session, lock=True
                )
                if status == "rejected" and rollout is not None:
                    _refuse_rejecting_the_fallback(rollout, adapter_id, number)
                if rollout is not None and rollout.candidate_version == number:
                    end_unfinished_rollout(
                        adapter,
                        pointer,
                        actor,
                        _operator_change(f"{kind} of version {number}", actor, reason),
                        session=session,
                    )
                version.status = status
                if pointer.canary_version == number:
                    clear_canary(
                        adapter, pointer, actor, f"version {number} {status}", session=session
                    )
                log_event(kind, adapter, actor, session=session, from_version=number, reason=reason)
            return VersionRecord.of(version, adapter_id)
