"""How an adapter is carried to a new base model, and what the carried version must show.

Part of the adapter's policy (training_policy.py), so the registry validates it when it is set. The
trainer distills the adapter (the teacher: the old base with the version) into a fresh LoRA
on the new base (the student), then measures the student against the teacher on prompts kept
out of training: the transfer gate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TransferPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # The defaults pass the demo's marker adapter carried to the demo successor base (KL
    # about 1.3, agreement about 0.42, 0.28 of the untrained KL left) and fail the successor
    # base untrained (KL about 4.8, agreement 0.18). Real models of one family sit much
    # closer to each other: tighten max_kl and min_agreement for them.
    max_kl: float = Field(
        2.0,
        gt=0,
        le=100,
        description="the gate: the student's mean per-token KL(teacher || "
        "student), in nats, on the held-out prompts' continuations, at most this",
    )
    min_agreement: float = Field(
        0.3,
        ge=0,
        le=1,
        description="the gate: the share of held-out continuation positions "
        "where the student's greedy next token is the teacher's, at least this",
    )
    min_kl_reduction: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="the gate: the student must remove at least this share "
        "of the new base's own KL from the teacher (measured on a fresh LoRA, untrained), so "
        "that a new base already close to the teacher does not pass without learning; 0: no "
        "such check",
    )
    make_live: bool = Field(
        True,
        description="make a version that passes the gate live on "
        "the new base (compare-and-swap on its live pointer)",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        le=10,
        description="of the distillation loss; above 1 the student learns "
        "more of the teacher's ranking of unlikely tokens",
    )
    continuation_tokens: int = Field(
        32, ge=1, le=1024, description="the longest teacher continuation per prompt"
    )
    samples_per_prompt: int = Field(
        4,
        ge=0,
        le=32,
        description="sampled teacher continuations per prompt, besides the greedy one",
    )
    epochs: int = Field(6, ge=0, le=100)
    min_steps: int = Field(
        100,
        ge=0,
        le=100_000,
        description="train more epochs than `epochs` until this many "
        "steps: an adapter with few prompts makes few steps an epoch",
    )
    learning_rate: float = Field(5e-3, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=512, description="continuations per step")
    held_out_fraction: float = Field(
        0.25, ge=0.05, le=0.5, description="of the prompts, kept out of training and measured on"
    )
    min_prompts: int = Field(
        8,
        ge=2,
        le=10_000,
        description="fewer distinct prompts than this fail the transfer: "
        "too few to learn from and measure on",
    )
    max_prompts: int = Field(
        64,
        ge=2,
        le=10_000,
        description="the most prompts distilled on: the policy's golden "
        "and sampling prompts first, then recorded ones, then feedback's, newest first",
    )
    min_held_out_prompts: int = Field(
        2,
        ge=1,
        le=1000,
        description="the gate decides on at least this many held-out "
        "prompts; with fewer the job fails undecided, before any distillation",
    )
    min_held_out_positions: int = Field(
        32,
        ge=1,
        le=1_000_000,
        description="the gate decides on at least this many "
        "held-out continuation positions; with fewer the job fails undecided, no version",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> TransferPolicy:
        if self.min_prompts > self.max_prompts:
            raise ValueError(
                f"min_prompts ({self.min_prompts}) is above max_prompts ({self.max_prompts})"
            )
        return self
