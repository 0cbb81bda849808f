"""Wire types of the admin API: one model per role (`XCreate` in, `XPublic` out).

Paths never appear: versions are named by adapter id and number, weights by content hash.
Each `XPublic` shows a registry record: its fields are named here, typed in the record and
read from it (serve/record_models.py).
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

from loraloop.adapters.activity import FeedbackActivity, HourCount
from loraloop.adapters.console_sessions import SessionRecord
from loraloop.adapters.names import MAX_TAG_CHARS
from loraloop.adapters.rollouts.book import RolloutRecord
from loraloop.adapters.tenants import IssuedKey, KeyRecord, TenantRecord
from loraloop.adapters.text import StoredText
from loraloop.adapters.training import RunRecord
from loraloop.adapters.transfers import TransferRecord
from loraloop.adapters.usage import UsageRecord
from loraloop.adapters.versions import AdapterRecord, EventRecord, VersionRecord

from ..record_models import record_model

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


_TenantFields: Any = record_model(TenantRecord, "name created_at created_by")


class TenantPublic(_TenantFields):
    pass


class KeyCreate(Strict):
    label: Annotated[StoredText, StringConstraints(max_length=128)] | None = None


_KeyFields: Any = record_model(KeyRecord, "tenant prefix label created_at created_by revoked_at")


class KeyPublic(_KeyFields):
    pass


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


_AdapterFields: Any = record_model(
    AdapterRecord,
    "id=adapter_id description created_at created_by live_version "
    "canary_version canary_percent latest_version",
)


class AdapterPublic(_AdapterFields):
    pass


_VersionFields: Any = record_model(
    VersionRecord,
    "adapter=adapter_id version=number status content_hash base_fingerprint "
    "base_override_reason rank alpha target_modules size_bytes source parent_version metrics "
    "tags created_at created_by",
    base_fingerprint=Annotated[str | None, Field(description="None for a tenant reader")],
)


class VersionPublic(_VersionFields):
    def seen_by(self, tenant: str | None) -> VersionPublic:
        """What a reader sees: an operator (None) everything; a tenant signed in to the
        console not which base models a carried version came from or went to (those
        identify the fleet's other bases, which are operators' business)."""
        if tenant is None:
            return self
        return self.model_copy(
            update={
                "base_fingerprint": None,
                "tags": {
                    key: value for key, value in self.tags.items() if key not in OPERATOR_TAGS
                },
            }
        )


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
    path: FormText = None,
    source: FormText = None,
    parent_version: FormText = None,
    reason: FormText = None,
    base_model_override_reason: FormText = None,
    metrics: FormText = None,
    tags: FormText = None,
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


_EventFields: Any = record_model(
    EventRecord, "id kind at actor tenant adapter=adapter_id from_version to_version reason detail"
)


class EventPublic(_EventFields):
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
            detail["policy"] = {
                key: value for key, value in detail["policy"].items() if key in TENANT_POLICY_FIELDS
            }
        detail.pop("base", None)
        if self.kind.startswith("transfer_") and self.kind != "transfer_queued":
            reason = TENANT_TRANSFER_REASONS.get(self.kind.removeprefix("transfer_"))
        elif self.kind == "rollout_paused" and self.actor.startswith("rollout:"):
            reason = "the rollout's driver could not decide; an operator can see why"
        return self.model_copy(update={"detail": detail, "reason": reason})


_RunFields: Any = record_model(
    RunRecord,
    "id adapter=adapter_id status requested_by worker parent_version "
    "candidate_version pairs progress metrics reason created_at started_at finished_at",
)


class RunPublic(_RunFields):
    pass


class RolloutStart(Strict):
    version: int = Field(ge=1, le=10**9)
    reason: Reason | None = None


_RolloutFields: Any = record_model(
    RolloutRecord,
    "id adapter=adapter_id candidate_version=candidate baseline_version=baseline "
    "status stage step stages=plan.stages step_started_at plan decision driver "
    "lease_expires_at reason created_at created_by finished_at",
    stage=Annotated[str, Field(description="shadow, canary N%, watch, or where it ended")],
    stages=Annotated[
        list[str], Field(description="the plan's steps in order, then live and watch")
    ],
    plan=dict[str, Any],
    decision=Annotated[dict[str, Any], Field(description="the last analysis, with its figures")],
)


class RolloutPublic(_RolloutFields):
    @field_validator("plan", mode="before")
    @classmethod
    def _plan_as_json(cls, plan: Any) -> Any:
        # The record holds the plan as a policy model; the wire has it as plain JSON.
        return plan.model_dump(mode="json") if isinstance(plan, BaseModel) else plan


_HourCountFields: Any = record_model(HourCount, "hour count")


class HourCountPublic(_HourCountFields):
    pass


_FeedbackActivityFields: Any = record_model(
    FeedbackActivity,
    "adapter=adapter_id pending per_hour",
    pending=Annotated[int, Field(description="feedback waiting for a training run")],
    per_hour=Annotated[
        list[HourCountPublic], Field(description="oldest first; empty hours left out")
    ],
)


class FeedbackActivityPublic(_FeedbackActivityFields):
    pass


_UsageFields: Any = record_model(
    UsageRecord,
    "hour version requests=count.requests prompt_tokens=count.prompt_tokens "
    "completion_tokens=count.completion_tokens",
    hour=Annotated[datetime, Field(description="the hour's start, UTC")],
)


class UsagePublic(_UsageFields):
    pass


class TransferCreate(Strict):
    to_base: BaseName = Field(
        description="the base model to carry the version to, by the "
        "name the trainers' transfer_targets give it"
    )
    version: VersionNumber | None = Field(
        None,
        description="the version to carry over; default: the one live on this server's base model",
    )
    reason: Reason | None = None


class MigrationCreate(Strict):
    to_base: BaseName = Field(
        description="the new base model, by the name the trainers' transfer_targets give it"
    )
    reason: Reason | None = None


_TransferFields: Any = record_model(
    TransferRecord,
    "id adapter=adapter_id from_version to_base to_base_fingerprint status "
    "requested_by worker attempts result_version progress metrics reason created_at "
    "started_at finished_at",
    to_base_fingerprint=Annotated[
        str | None, Field(description="once a trainer resolved the name")
    ],
    status=Annotated[str, Field(description="queued, running, passed, rejected or failed")],
    attempts=Annotated[int, Field(description="times a trainer started it (more: a lease lapsed)")],
    result_version=Annotated[int | None, Field(description="the version made for the new base")],
    metrics=Annotated[dict[str, Any], Field(description="the transfer gate's figures")],
)


class TransferPublic(_TransferFields):
    def seen_by(self, tenant: str | None) -> TransferPublic:
        """A tenant signed in to the console sees its job's status and figures with a
        generic reason: the trainers' own reasons name the bases they know, their
        fingerprints and files, which only operators may read (None: an operator)."""
        if tenant is None:
            return self
        return self.model_copy(
            update={
                "to_base_fingerprint": None,
                "worker": None,
                "reason": TENANT_TRANSFER_REASONS.get(self.status),
            }
        )


class MigrationPublic(BaseModel):
    to_base: str
    queued: list[int] = Field(
        description="ids of the jobs this request queued; the others "
        "were queued, running or passed already"
    )
    jobs: list[TransferPublic] = Field(description="one per adapter live on this server's base")


SessionSubject = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


_SessionFields: Any = record_model(
    SessionRecord,
    "id subject actor client issued_at last_seen_at live revoked_at revoked_by",
    subject=Annotated[
        str,
        Field(
            description="admin:<digest of the admin credential>, or the "
            "prefix of the tenant key it signed in with"
        ),
    ],
    client=Annotated[str | None, Field(description="the address it signed in from")],
    live=Annotated[bool, Field(description="neither ended nor expired")],
)


class SessionPublic(_SessionFields):
    """A console session as admins see it: who, from where, since when; never its tokens."""

    @classmethod
    def of(cls, record: SessionRecord, *, live: bool) -> SessionPublic:
        """`live`: the server's reading of the record against its console settings."""
        return cls(live=live, **vars(record))
