"""An adapter's rollout plan: how a new version earns its traffic, step by step, on evidence
from live requests, and when it is rolled back.

Part of the adapter's policy (training_policy.py), so the registry validates it when it is set; a
rollout keeps a copy of the plan it started with, so changing the policy never changes a
rollout under way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RolloutStep(BaseModel):
    """One step: the share of the adapter's requests the new version answers (0: shadow,
    users see only the live version's answers) and what must be seen before it may end."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    percent: int = Field(
        ge=0, le=99, description="share of requests the new version answers; 0 is shadow"
    )
    min_requests: int = Field(
        20,
        ge=0,
        le=1_000_000,
        description="requests of the adapter served during the "
        "step before it may advance (in shadow, requests of the live version)",
    )
    min_comparisons: int = Field(
        8,
        ge=0,
        le=100_000,
        description="judged shadow comparisons during the step before it may advance",
    )
    max_seconds: int = Field(
        3600,
        ge=1,
        le=30 * 86_400,
        description="a step still undecided this long after it "
        "began ends as the plan's `undecided` says",
    )

    @property
    def stage(self) -> str:
        """What the step is, in words: shadow, canary 10%."""
        return "shadow" if self.percent == 0 else f"canary {self.percent}%"


def _default_steps() -> list[RolloutStep]:
    return [RolloutStep(percent=0), RolloutStep(percent=10), RolloutStep(percent=50)]


class WatchWindow(BaseModel):
    """After the new version becomes live: its answers are compared with the previous
    version's on live prompts; a significant drop rolls it back."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_comparisons: int = Field(8, ge=0, le=100_000)
    max_seconds: int = Field(
        3600,
        ge=1,
        le=30 * 86_400,
        description="the window's length; the rollout completes at its end unless rolled back",
    )


class Guards(BaseModel):
    """Checks on the new version's serving, against the live version's over the same step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_requests: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="requests each version must have served before the guards judge",
    )
    max_error_rate_increase: float = Field(
        0.02, ge=0, le=1, description="failed requests, as a share, above the live version's"
    )
    max_empty_rate_increase: float = Field(
        0.05, ge=0, le=1, description="empty answers, as a share, above the live version's"
    )
    max_time_per_token_ratio: float = Field(
        1.5, ge=1, le=100, description="p95 time per output token against the live version's"
    )


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: list[RolloutStep] = Field(
        default_factory=_default_steps,
        min_length=1,
        max_length=10,
        description="shadow (percent 0) and canary steps, in order; live comes after the last",
    )
    shadow_percent: float = Field(
        20,
        gt=0,
        le=100,
        description="share of the adapter's requests the other version "
        "answers again out of band, for the judge to compare; users never see these answers",
    )
    error_rate: float = Field(
        0.05,
        ge=0.001,
        le=0.2,
        description="the sequential test's chance of a wrong advance "
        "(and, apart, of a wrong rollback) over the whole step, however often it looks",
    )
    undecided: Literal["rollback", "advance"] = Field(
        "rollback", description="what a step does when it reaches max_seconds undecided"
    )
    guards: Guards = Field(default_factory=Guards)
    watch: WatchWindow | None = Field(default_factory=WatchWindow)

    @property
    def stages(self) -> list[str]:
        """Every stage in order, in words: the steps, then the watch (or live, without)."""
        return [*(step.stage for step in self.steps), "watch" if self.watch else "live"]

    @model_validator(mode="after")
    def _canary_shares_grow(self) -> RolloutPolicy:
        shares = [step.percent for step in self.steps]
        if shares != sorted(shares) or len(set(s for s in shares if s)) != len(
            [s for s in shares if s]
        ):
            raise ValueError(
                f"the steps' percents {shares} must grow step by step (shadow, "
                "percent 0, only before the canary steps)"
            )
        return self
