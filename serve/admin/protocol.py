"""Wire types of the admin API: one model per role (`XCreate` in, `XPublic` out).

Paths never appear: versions are named by adapter id and number, weights by content hash.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import Form
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from loraloop.adapters.activity import FeedbackActivity
from loraloop.adapters.console_sessions import SessionRecord
from loraloop.adapters.names import MAX_TAG_CHARS
from loraloop.adapters.rollouts import RolloutRecord
from loraloop.adapters.tenants import IssuedKey, KeyRecord, TenantRecord
from loraloop.adapters.text import StoredText
from loraloop.adapters.training import RunRecord
from loraloop.adapters.transfers import TransferRecord
from loraloop.adapters.usage import UsageRecord
from loraloop.adapters.versions import AdapterRecord, EventRecord, VersionRecord

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
AdapterId = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$")
]
BaseName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Reason = Annotated[StoredText, StringConstraints(max_length=1000)]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
# Version tags a carried version gets that name other base models by fingerprint.
OPERATOR_TAGS = frozenset({"teacher_base", "student_base"})
TENANT_TRANSFER_REASONS = {
    "passed": "carried to the new base model",
    "rejected": "the carried version did not pass the transfer gate; an operator can see why",
    "failed": "the transfer could not be done; an operator can see why",
}
# Fields of an adapter's policy its tenant may read in its history: the rollout plan, which
# its rollouts show too. The policy itself is for operators only.
TENANT_POLICY_FIELDS = frozenset({"rollout"})
VersionNumber = Annotated[int, Field(ge=1, le=10**9)]
MAX_ENTRIES = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(Strict):
    name: Name


class TenantPublic(BaseModel):
    name: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, record: TenantRecord) -> TenantPublic:
        return cls(**vars(record))


class KeyCreate(Strict):
    label: Annotated[StoredText, StringConstraints(max_length=128)] | None = None


class KeyPublic(BaseModel):
    tenant: str
    prefix: str
    label: str | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: KeyRecord) -> KeyPublic:
        return cls(**vars(record))


class KeyIssuedPublic(KeyPublic):
    key: str = Field(description="shown only in this response; store it now")

    @classmethod
    def issued(cls, issued: IssuedKey) -> KeyIssuedPublic:
        return cls(key=issued.key, **vars(issued.record))


class ReasonBody(Strict):
    reason: Reason | None = None


class AdapterCreate(Strict):
    id: AdapterId
    description: Reason | None = None


class AdapterPublic(BaseModel):
    id: str
    description: str | None
    created_at: datetime
    created_by: str
    live_version: int | None
    canary_version: int | None
    canary_percent: int | None
    latest_version: int | None

    @classmethod
    def of(cls, record: AdapterRecord) -> AdapterPublic:
        fields = vars(record).copy()
        return cls(id=fields.pop("adapter_id"), **fields)


class VersionPublic(BaseModel):
    adapter: str
    version: int
    status: str
    content_hash: str
    base_fingerprint: str | None = Field(description="None for a tenant reader")
    base_override_reason: str | None
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    source: str
    parent_version: int | None
    metrics: dict[str, float]
    tags: dict[str, str]
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, r: VersionRecord) -> VersionPublic:
        return cls(
            adapter=r.adapter_id, version=r.number, status=r.status,
            content_hash=r.content_hash, base_fingerprint=r.base_fingerprint,
            base_override_reason=r.base_override_reason, rank=r.rank, alpha=r.alpha,
            target_modules=list(r.target_modules), size_bytes=r.size_bytes, source=r.source,
            parent_version=r.parent_version, metrics=dict(r.metrics), tags=dict(r.tags),
            created_at=r.created_at, created_by=r.created_by,
        )

    def seen_by(self, tenant: str | None) -> VersionPublic:
        """What a reader sees: an operator (None) everything; a tenant signed in to the
        console not which base models a carried version came from or went to (those
        identify the fleet's other bases, which are operators' business)."""
        if tenant is None:
            return self
        return self.model_copy(update={"base_fingerprint": None, "tags": {
            key: value for key, value in self.tags.items() if key not in OPERATOR_TAGS}})


class VersionCreate(Strict):
    """The form fields that come with an upload (or name a server path instead)."""

    path: Annotated[StoredText, StringConstraints(min_length=1, max_length=4096)] | None = None
    source: Label | None = None
    parent_version: VersionNumber | None = None
    reason: Reason | None = None
    base_model_override_reason: Reason | None = Field(
        None, description="accept a different base_model_name_or_path, recording why"
    )
    metrics: dict[Label, float] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    tags: dict[Label, Annotated[StoredText, StringConstraints(max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_ENTRIES
    )

    @field_validator("metrics", "tags", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        # Multipart fields are text: metrics and tags arrive as JSON objects in a string.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("metrics")
    @classmethod
    def _finite(cls, metrics: dict[str, float]) -> dict[str, float]:
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ValueError("metric values must be finite numbers")
        return metrics


FormText = Annotated[str | None, Form()]


def version_form(
    path: FormText = None, source: FormText = None, parent_version: FormText = None,
    reason: FormText = None, base_model_override_reason: FormText = None,
    metrics: FormText = None, tags: FormText = None,
) -> VersionCreate:
    """The registration form's text fields, validated like a JSON body."""
    fields = {name: value for name, value in locals().items() if value is not None}
    try:
        return VersionCreate.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


class PromoteRequest(Strict):
    version: VersionNumber
    expected_live: Annotated[int, Field(ge=0, le=10**9)] | None = Field(
        None, description="promote only if this is still the live version (0: none is live)"
    )
    reason: Reason | None = None


class RollbackRequest(Strict):
    to_version: VersionNumber | None = Field(
        None, description="default: the version that was live before the current one"
    )
    reason: Reason | None = None


class CanaryRequest(Strict):
    version: VersionNumber
    percent: Annotated[int, Field(ge=1, le=99)]
    reason: Reason | None = None


class EventPublic(BaseModel):
    id: int
    kind: str
    at: datetime
    actor: str
    tenant: str | None
    adapter: str | None
    from_version: int | None
    to_version: int | None
    reason: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, record: EventRecord) -> EventPublic:
        fields = vars(record).copy()
        return cls(adapter=fields.pop("adapter_id"), **fields)

    def seen_by(self, tenant: str | None) -> EventPublic:
        """What a reader sees: an operator (None) everything; a tenant signed in to the
        console no more than its other routes show it. Its policy is the operators' (the
        judge's URL, rubric and key variable among it), so of a policy_set only the fields
        it can read elsewhere stay; base fingerprints and trainers' own reasons go, as in
        its versions and transfers."""
        if tenant is None:
            return self
        detail, reason = dict(self.detail), self.reason
        if self.kind == "policy_set" and isinstance(detail.get("policy"), dict):
            detail["policy"] = {key: value for key, value in detail["policy"].items()
                                if key in TENANT_POLICY_FIELDS}
        detail.pop("base", None)
        if self.kind.startswith("transfer_") and self.kind != "transfer_queued":
            reason = TENANT_TRANSFER_REASONS.get(self.kind.removeprefix("transfer_"))
        elif self.kind == "rollout_paused" and self.actor.startswith("rollout:"):
            reason = "the rollout's driver could not decide; an operator can see why"
        return self.model_copy(update={"detail": detail, "reason": reason})


class RunPublic(BaseModel):
    id: int
    adapter: str
    status: str
    requested_by: str | None
    worker: str | None
    parent_version: int | None
    candidate_version: int | None
    pairs: int | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, record: RunRecord) -> RunPublic:
        fields = vars(record).copy()
        return cls(adapter=fields.pop("adapter_id"), **fields)


class RolloutStart(Strict):
    version: int = Field(ge=1, le=10**9)
    reason: Reason | None = None


class RolloutPublic(BaseModel):
    id: int
    adapter: str
    candidate_version: int
    baseline_version: int
    status: str
    stage: str = Field(description="shadow, canary N%, watch, or where it ended")
    step: int
    stages: list[str] = Field(description="the plan's steps in order, then live and watch")
    step_started_at: datetime
    plan: dict[str, Any]
    decision: dict[str, Any] = Field(description="the last analysis, with its figures")
    driver: str | None
    lease_expires_at: datetime | None
    reason: str | None
    created_at: datetime
    created_by: str
    finished_at: datetime | None

    @classmethod
    def of(cls, record: RolloutRecord) -> RolloutPublic:
        plan = record.plan
        return cls(
            id=record.id, adapter=record.adapter_id, candidate_version=record.candidate,
            baseline_version=record.baseline, status=record.status, stage=record.stage,
            step=record.step, stages=plan.stages,
            step_started_at=record.step_started_at, plan=plan.model_dump(mode="json"),
            decision=dict(record.decision), driver=record.driver,
            lease_expires_at=record.lease_expires_at, reason=record.reason,
            created_at=record.created_at, created_by=record.created_by,
            finished_at=record.finished_at)


class HourCountPublic(BaseModel):
    hour: datetime
    count: int


class FeedbackActivityPublic(BaseModel):
    adapter: str
    pending: int = Field(description="feedback waiting for a training run")
    per_hour: list[HourCountPublic] = Field(description="oldest first; empty hours left out")

    @classmethod
    def of(cls, record: FeedbackActivity) -> FeedbackActivityPublic:
        return cls(adapter=record.adapter_id, pending=record.pending,
                   per_hour=[HourCountPublic(hour=h.hour, count=h.count)
                             for h in record.per_hour])


class UsagePublic(BaseModel):
    hour: datetime = Field(description="the hour's start, UTC")
    version: int
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, record: UsageRecord) -> UsagePublic:
        return cls(hour=record.hour, version=record.version, **vars(record.count))


class TransferCreate(Strict):
    to_base: BaseName = Field(description="the base model to carry the version to, by the "
                              "name the trainers' transfer_targets give it")
    version: VersionNumber | None = Field(
        None, description="the version to carry over; default: the one live on this "
        "server's base model")
    reason: Reason | None = None


class MigrationCreate(Strict):
    to_base: BaseName = Field(description="the new base model, by the name the trainers' "
                              "transfer_targets give it")
    reason: Reason | None = None


class TransferPublic(BaseModel):
    id: int
    adapter: str
    from_version: int
    to_base: str
    to_base_fingerprint: str | None = Field(description="once a trainer resolved the name")
    status: str = Field(description="queued, running, passed, rejected or failed")
    requested_by: str
    worker: str | None
    attempts: int = Field(description="times a trainer started it (more: a lease lapsed)")
    result_version: int | None = Field(description="the version made for the new base")
    progress: dict[str, Any]
    metrics: dict[str, Any] = Field(description="the transfer gate's figures")
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, record: TransferRecord) -> TransferPublic:
        fields = vars(record).copy()
        return cls(adapter=fields.pop("adapter_id"), **fields)

    def seen_by(self, tenant: str | None) -> TransferPublic:
        """A tenant signed in to the console sees its job's status and figures with a
        generic reason: the trainers' own reasons name the bases they know, their
        fingerprints and files, which only operators may read (None: an operator)."""
        if tenant is None:
            return self
        return self.model_copy(update={"to_base_fingerprint": None, "worker": None,
                                       "reason": TENANT_TRANSFER_REASONS.get(self.status)})


class MigrationPublic(BaseModel):
    to_base: str
    queued: list[int] = Field(description="ids of the jobs this request queued; the others "
                              "were queued, running or passed already")
    jobs: list[TransferPublic] = Field(description="one per adapter live on this server's base")


SessionSubject = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class SessionPublic(BaseModel):
    """A console session as admins see it: who, from where, since when; never its tokens."""

    id: int
    subject: str = Field(description="admin:<digest of the admin credential>, or the prefix of "
                         "the tenant key it signed in with")
    actor: str
    client: str | None = Field(description="the address it signed in from")
    issued_at: datetime
    last_seen_at: datetime
    live: bool = Field(description="neither ended nor expired")
    revoked_at: datetime | None
    revoked_by: str | None

    @classmethod
    def of(cls, record: SessionRecord, *, live: bool) -> SessionPublic:
        return cls(id=record.id, subject=record.subject, actor=record.actor,
                   client=record.client, issued_at=record.issued_at,
                   last_seen_at=record.last_seen_at, live=live,
                   revoked_at=record.revoked_at, revoked_by=record.revoked_by)
