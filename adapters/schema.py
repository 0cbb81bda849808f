"""The registry's tables, and the lookups of rows by their names that every book shares.
Alembic migrations (adapters/migrations) create the tables; this module is the schema they
must match (a test compares the two on SQLite and PostgreSQL).

Pointers (`live`, `canary`) are kept per adapter and base model (live_pointers), so a fleet
can serve an adapter on an old and a new base side by side; promote is one conditional
update of one pointer row. Versions are never updated except for their status, never deleted.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import ClassVar, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import InvalidArgument, NotFound
from .names import ADAPTER_ID_HELP, is_valid_adapter_id

NAME_LENGTH = 63  # one part of tenant/name
# What a status column may hold (stored as text).
VersionStatus = Literal["candidate", "live", "retired", "rejected"]
RolloutStatus = Literal["active", "paused", "completed", "rolled_back", "aborted", "superseded"]
TransferStatus = Literal["queued", "running", "passed", "rejected", "failed"]
# The changes an adapter's history records.
EventKind = Literal[
    "tenant_created",
    "key_issued",
    "key_revoked",
    "adapter_created",
    "register",
    "promote",
    "rollback",
    "canary_set",
    "canary_cleared",
    "reject",
    "retire",
    "policy_set",
    "training_queued",
    "training_failed",
    "rollout_started",
    "rollout_advance",
    "rollout_rollback",
    "rollout_paused",
    "rollout_resumed",
    "rollout_aborted",
    "rollout_completed",
    "rollout_superseded",
    "transfer_queued",
    "transfer_started",
    "transfer_passed",
    "transfer_rejected",
    "transfer_failed",
]
ACTOR_LENGTH = 128


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    # Every model here maps one table (DeclarativeBase types it as any FROM clause).
    __table__: ClassVar[Table]


class RegistryRevision(Base):
    """One row; every mutation increments it in its own transaction.

    Servers poll it to notice writes from other processes. Incrementing it first also
    serializes writers on PostgreSQL (the row lock is held until commit).
    """

    __tablename__ = "registry_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)


class ApiKey(Base):
    """A tenant's API key, stored only as a hash; `prefix` identifies it in listings."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """One console sign-in (adapters/console_sessions.py). The cookie holds a random token
    stored only as its hash; signing out sets `revoked_at`, which every replica reads."""

    __tablename__ = "console_sessions"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    subject: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    client: Mapped[str | None] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(ACTOR_LENGTH))


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    # The trainer's policy for this adapter (training_policy.py); None: the defaults.
    policy: Mapped[dict | None] = mapped_column(JSON)


class LivePointer(Base):
    """Which versions serve an adapter on one base model (by its fingerprint): the live one
    and a canary with its share. Version numbers, not row ids; None: none."""

    __tablename__ = "live_pointers"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    base_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    live_version: Mapped[int | None] = mapped_column(Integer)
    canary_version: Mapped[int | None] = mapped_column(Integer)
    canary_percent: Mapped[int | None] = mapped_column(Integer)


class AdapterVersion(Base):
    """An immutable adapter version. Its row id is its engine LoRA id: unique, never reused."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "number"),
        UniqueConstraint("adapter_id", "content_hash"),  # same files twice: same version
        {"sqlite_autoincrement": True},  # SQLite would otherwise reuse the largest freed id
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[VersionStatus] = mapped_column(String(16), nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    storage_key: Mapped[str] = mapped_column(String(160), nullable=False)
    base_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    base_override_reason: Mapped[str | None] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    alpha: Mapped[float] = mapped_column(Float, nullable=False)
    target_modules: Mapped[list] = mapped_column(JSON, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    source: Mapped[str] = mapped_column(String(64), nullable=False)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    tags: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)


class Event(Base):
    """Append-only audit trail: one row per registry change, written in the change's transaction."""

    __tablename__ = "events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[EventKind] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)


class Feedback(Base):
    """What a user (or an AI judge) thought of an answer: one preference pair or one score.

    `status` moves pending -> claimed (by a training run, under a lease) -> consumed (in the
    transaction that registers the version trained on it); an expired lease makes a claimed
    row claimable again. A row the trainer's policy says will never make a training pair
    (a score no other score of its prompt differs from enough, in time) becomes unpaired,
    from pending or claimed; consumed and unpaired are final.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_feedback_adapter_status", "adapter_id", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer)  # the version that answered, if known
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # preference | score
    prompt: Mapped[dict] = mapped_column(JSON, nullable=False)  # {"messages": [...]} | {"text"}
    chosen: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    judge: Mapped[str | None] = mapped_column(String(128))  # who gave the score, in its words
    rationale: Mapped[str | None] = mapped_column(Text)
    completion_id: Mapped[str | None] = mapped_column(String(100))
    # application (posted to /v1/feedback) | trainer (its judge's scores of sampled answers):
    # only applications' scores are evidence about a version's users.
    source: Mapped[str] = mapped_column(
        String(16), nullable=False, default="application", server_default="application"
    )
    # pending | claimed | consumed | unpaired: a plain string, so a new state needs no migration
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consumed_by_version: Mapped[int | None] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RecordedCompletion(Base):
    """A completion kept (when the adapter's policy says so) for score feedback to name."""

    __tablename__ = "completions"

    completion_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    choice: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    prompt: Mapped[dict] = mapped_column(JSON, nullable=False)
    output: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """One trainer run for one adapter: queued, running, then promoted, rejected, candidate
    (passed, but auto-promote is off) or failed."""

    __tablename__ = "training_runs"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    requested_by: Mapped[str | None] = mapped_column(String(ACTOR_LENGTH))
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    candidate_version: Mapped[int | None] = mapped_column(Integer)
    pairs: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UsageHour(Base):
    """Requests and tokens one adapter version served in one hour, summed over every server:
    each adds what it counted since its last write (adapters/usage.py)."""

    __tablename__ = "usage_hours"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Rollout(Base):
    """One new version earning its traffic (adapters/rollouts/book.py): its step in the plan it
    started with, the last decision with its figures, and the lease of the process driving
    it. `status` moves active <-> paused, then completed, rolled_back, aborted or superseded
    (an operator's own promote, rollback or canary change ended it)."""

    __tablename__ = "rollouts"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False, index=True)
    base_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)  # both versions'
    candidate_version: Mapped[int] = mapped_column(Integer, nullable=False)
    baseline_version: Mapped[int] = mapped_column(Integer, nullable=False)  # live at the start
    status: Mapped[RolloutStatus] = mapped_column(String(16), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)  # len(plan steps): the watch
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    plan: Mapped[dict] = mapped_column(JSON, nullable=False)
    decision: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    driver: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ShadowComparison(Base):
    """One live prompt answered by both versions of a rollout: the one the user saw and the
    other, out of band. `verdict` is the judge's (candidate, baseline, tie, abstained), set
    by the rollout's driver; None until then.

    The texts (the user's prompt, both answers) are the users': they are kept once judged
    only where the adapter's policy keeps users' text (record_completions), and by no one
    past the shadow retention period; then they are NULL and the verdict stays."""

    __tablename__ = "shadow_comparisons"
    __table_args__ = (
        Index("ix_shadow_comparisons_rollout_step", "rollout_id", "step"),
        Index("ix_shadow_comparisons_created_at", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    served_version: Mapped[int] = mapped_column(Integer, nullable=False)
    prompt: Mapped[dict | None] = mapped_column(JSON)
    candidate_answer: Mapped[str | None] = mapped_column(Text)
    baseline_answer: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str | None] = mapped_column(String(16))
    rationale: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RolloutCount(Base):
    """A counter of one version's serving during one step of a rollout (requests, failed
    requests, empty answers, time-per-token histogram buckets), summed over every server as
    usage_hours is."""

    __tablename__ = "rollout_counts"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class TransferJob(Base):
    """One adapter version carried to another base model by distillation (adapters/
    transfers.py): queued, running (claimed under a lease; a lapsed one is claimed again),
    then passed (a version for the new base), rejected (a version failed the transfer gate
    and was rejected) or failed (no version). The target base is a name the trainers know
    (their transfer_targets), resolved to its fingerprint when a trainer starts the job."""

    __tablename__ = "transfer_jobs"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), nullable=False, index=True)
    from_version: Mapped[int] = mapped_column(Integer, nullable=False)
    to_base: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    to_base_fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[TransferStatus] = mapped_column(String(16), nullable=False)
    requested_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH), nullable=False)
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    result_version: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- Row lookups the books share; each takes the session as a keyword and never commits. --


def utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; every time the registry writes is UTC. PostgreSQL
    # gives them in its session's time zone, which may be any: the same moment, in UTC.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def tenant_row(name: str, *, session: Session) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"There is no tenant '{name}'. Create it first: loraloop tenants create.")
    return tenant


def split_adapter_id(adapter_id: str) -> tuple[str, str]:
    if not is_valid_adapter_id(adapter_id):
        raise InvalidArgument(f"'{adapter_id[:140]}' is not an adapter id: {ADAPTER_ID_HELP}.")
    tenant, name = adapter_id.split("/", 1)
    return tenant, name


def adapter_row(adapter_id: str, *, session: Session) -> Adapter:
    tenant, name = split_adapter_id(adapter_id)
    row = session.scalar(
        select(Adapter).join(Tenant).where(Tenant.name == tenant, Adapter.name == name)
    )
    if row is None:
        raise NotFound(f"There is no adapter '{adapter_id}'. Create it first.")
    return row


def version_row(
    adapter: Adapter, adapter_id: str, number: int, *, session: Session
) -> AdapterVersion:
    row = session.scalar(
        select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter.id, AdapterVersion.number == number
        )
    )
    if row is None:
        raise NotFound(f"The adapter '{adapter_id}' has no version {number}.")
    return row


def adapter_row_id_to_name(adapter_row_id: int, *, session: Session) -> str:
    tenant, name = session.execute(
        select(Tenant.name, Adapter.name).join(Adapter).where(Adapter.id == adapter_row_id)
    ).one()
    return f"{tenant}/{name}"
