"""An adapter's training policy: when the trainer runs, how it trains, what a candidate must
show before it is promoted.

The registry owns this shape: it validates a policy when it is set (a bad one is refused
then, never skipped later), stores it as JSON, and hands it back typed to the server (which
reads `record_completions`) and the trainer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .text import StoredText

GoldenPrompt = Annotated[StoredText, StringConstraints(min_length=1, max_length=2000)]


class GatePolicy(BaseModel):
    """What a candidate must show on held-out feedback, against the live version."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float = Field(
        0.6, ge=0, le=1, description="held-out preference accuracy a candidate must reach"
    )
    promote_margin: float = Field(
        0.05, ge=0, le=1, description="accuracy gain over the live version to auto-promote"
    )
    confidence_z: float = Field(
        2.33, ge=0, le=10,
        description="the per-pair reward-margin gain over the live version must be positive "
        "at this many standard errors (2.33: one-sided 99%)",
    )
    max_kl_from_live: float = Field(
        2.0, gt=0, description="mean per-token KL (nats) from the live version, on the prompt set"
    )
    max_kl_from_base: float = Field(
        4.0, gt=0, description="mean per-token KL (nats) from the base model, on the prompt set"
    )


class TrainingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="the trainer considers this adapter")
    auto_promote: bool = Field(True, description="promote a candidate that passes the gate")
    record_completions: bool = Field(
        False, description="keep prompts and outputs so scores can name a completion_id"
    )
    min_pairs: int = Field(
        32, ge=2, le=100_000, description="preference pairs the pending feedback must make "
        "before a run (a preference is one; the scores of one prompt make one when they "
        "differ by score_gap; other feedback does not count)"
    )
    max_wait_s: int = Field(
        3600, ge=0, description="run with fewer pairs (at least 4) once feedback is this old; "
        "a score that makes no pair this long after it arrived is set aside as unpaired"
    )
    score_gap: float = Field(
        0.3, gt=0, le=1, description="judge scores for one prompt pair up best vs worst "
        "when they differ by at least this"
    )
    held_out_fraction: float = Field(0.25, ge=0.05, le=0.5)
    beta: float = Field(0.1, gt=0, le=10, description="DPO beta")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(8, ge=1, le=512)
    rank: int = Field(8, ge=1, le=512, description="LoRA rank of a first version")
    seed: int = Field(0, ge=0)
    golden_prompts: list[GoldenPrompt] = Field(
        default_factory=list, max_length=256,
        description="user messages to measure drift on; default: the held-out prompts",
    )
    gate: GatePolicy = Field(default_factory=GatePolicy)

    @classmethod
    def stored(cls, value: dict | None) -> TrainingPolicy:
        """A policy as the registry keeps it (None: never set, so the defaults)."""
        return cls.model_validate(value or {})
