"""An adapter's training policy: when the trainer runs, how it trains, what a candidate must
show before it is promoted.

The registry owns this shape: it validates a policy when it is set (a bad one is refused
then, never skipped later), stores it as JSON, and hands it back typed to the server (which
reads `record_completions`) and the trainer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    model_validator,
)

from .compute_policy import ComputePolicy
from .judge_checks import (
    Admission,
    is_schema,
    key_variable_allowed,
    pattern_compiles,
    patterns_compile,
)
from .names import MAX_TAG_CHARS
from .rollout_policy import RolloutPolicy
from .text import StoredText
from .transfer_policy import TransferPolicy

# What the trainer can use: a wait it can add to a date (30 days, the longest schedule), a
# seed numpy and torch accept (numpy's are 32-bit).
MAX_WAIT_S = 30 * 86_400
MAX_SEED = 2**32 - 1

GoldenPrompt = Annotated[StoredText, StringConstraints(min_length=1, max_length=2000)]


Pattern = Annotated[
    StoredText, StringConstraints(min_length=1, max_length=500), AfterValidator(pattern_compiles)
]
Patterns = Annotated[list[Pattern], Field(max_length=32), AfterValidator(patterns_compile)]


class RuleJudgePolicy(BaseModel):
    """Verifiable rewards: declarative checks, each answer scored by the share it passes."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rules"]
    min_tokens: int | None = Field(None, ge=0, description="answers at least this long")
    max_tokens: int | None = Field(None, ge=1, description="answers at most this long")
    required: Patterns = Field(
        default_factory=list,
        description="regular expressions an answer must match (each searched with a time limit)",
    )
    forbidden: Patterns = Field(
        default_factory=list, description="regular expressions an answer must not match"
    )
    valid_json: bool = Field(False, description="the answer must be a JSON document")
    json_schema: Annotated[dict[str, Any], AfterValidator(is_schema)] | None = Field(
        None,
        description="the answer must be JSON valid against this JSON Schema (its "
        "patterns searched with the same time limit)",
    )

    @model_validator(mode="after")
    def _checks_something(self) -> RuleJudgePolicy:
        if not (
            self.min_tokens is not None
            or self.max_tokens is not None
            or self.required
            or self.forbidden
            or self.valid_json
            or self.json_schema is not None
        ):
            raise ValueError("a rules judge needs at least one check")
        return self


class LLMJudgePolicy(BaseModel):
    """A model behind an OpenAI-compatible chat endpoint compares answers by the rubric."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llm"]
    url: HttpUrl = Field(description="the endpoint's base URL, e.g. https://host/v1")
    model: Annotated[StoredText, StringConstraints(min_length=1, max_length=256)]
    api_key_env: (
        Annotated[
            str,
            StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$"),
            AfterValidator(key_variable_allowed),
        ]
        | None
    ) = Field(
        None,
        description="the trainer's environment variable holding the endpoint's key, one "
        "the operator allows (LORALOOP_JUDGE_KEY_VARIABLES); the key itself is never stored",
    )
    rubric: Annotated[StoredText, StringConstraints(min_length=1, max_length=4000)]
    structured: bool = Field(
        True,
        description="ask for the verdict as JSON through response_format (endpoints "
        "that support structured outputs answer in shape)",
    )
    timeout_s: float = Field(30, gt=0, le=600)
    retries: int = Field(2, ge=0, le=10, description="retries of a failed call, with backoff")
    max_calls: int = Field(500, ge=1, le=100_000, description="judge calls in one run")
    max_seconds: float = Field(
        900,
        gt=0,
        le=86_400,
        description="time the judge may take in one run; after it, "
        "every judgement is an abstention and the run goes on",
    )


class PythonJudgePolicy(BaseModel):
    """A function importable in the trainer's environment, named by an operator: never code
    sent through the API."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["python"]
    target: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=200)
    ] = Field(
        description="module:function; called with (prompt, completion), returns a score in "
        "[0, 1], (score, rationale), or None to abstain"
    )


class SamplingPolicy(BaseModel):
    """On-policy learning: in each run, the live version answers prompts `samples` times at
    the serving temperature, the policy's judge scores the answers, and the scores become
    feedback (paired within each prompt, as for any scores)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompts: list[GoldenPrompt] = Field(
        default_factory=list, max_length=256, description="user messages to sample on"
    )
    recorded: bool = Field(
        True,
        description="also the adapter's recorded prompts, newest first (they need "
        "record_completions)",
    )
    max_prompts: int = Field(16, ge=1, le=256, description="prompts per run, after dedup")
    samples: int = Field(
        8,
        ge=2,
        le=16,
        description="answers per prompt. A prompt teaches only when its "
        "answers score apart: if the judge passes a share p of them, all k answers agree with "
        "chance p^k + (1-p)^k, and the prompt makes k*(k-1)*p*(1-p) pairs on average. For a "
        "behaviour met in 25% of answers, 4 answers leave 32% of prompts with no pair and "
        "make 2.3 pairs a prompt; 8 leave 10% and make 5.9 (capped at max_pairs_per_prompt "
        "8)",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        le=2,
        description="the sampling temperature: 1, the model's own "
        "distribution, so the answers differ (a greedy-like temperature makes a prompt's "
        "answers identical, and identical answers never pair) and the behaviours a round "
        "teaches are the ones the version already shows at times",
    )
    max_tokens: int = Field(64, ge=1, le=1024, description="the longest answer sampled")
    every_s: int | None = Field(
        None,
        ge=60,
        le=30 * 86_400,
        description="also sample and train on its own this long "
        "after the last run began (none: only in runs an operator queues)",
    )


JudgePolicy = Annotated[
    RuleJudgePolicy | LLMJudgePolicy | PythonJudgePolicy, Field(discriminator="kind")
]


def _low_to_high(bounds: tuple) -> tuple:
    if bounds[0] > bounds[1]:
        raise ValueError(
            f"[{bounds[0]}, {bounds[1]}] runs from high to low; give the low end first"
        )
    return bounds


def _distinct(items: list) -> list:
    repeated = sorted({str(item) for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} appears more than once")
    return items


def _fits_a_tag(names: list[str]) -> list[str]:
    # A search records each module set it tried with the version, as one tag.
    if len(",".join(names)) > MAX_TAG_CHARS:
        raise ValueError(
            f"these {len(names)} names take more than {MAX_TAG_CHARS} characters joined by commas"
        )
    return names


Beta = Annotated[float, Field(gt=0, le=10)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
Epochs = Annotated[int, Field(ge=1, le=100)]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ModuleSet = Annotated[
    list[ModuleName],
    Field(min_length=1, max_length=16),
    AfterValidator(_distinct),
    AfterValidator(_fits_a_tag),
]


class SearchPolicy(BaseModel):
    """Hyperparameter search: each run trains several settings (Optuna's TPE, seeded by the
    policy's seed) and scores them on a validation split of its training pairs; the best one
    goes to the gate, which judges it on the held-out pairs as it judges any candidate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trials: int = Field(8, ge=1, le=64, description="settings tried in one run, at most")
    max_seconds: float = Field(
        600,
        gt=0,
        le=86_400,
        description="no trial starts after the search has taken this long (the first always runs)",
    )
    validation_fraction: float = Field(
        0.25,
        ge=0.1,
        le=0.5,
        description="share of the training pairs (whole prompts) the "
        "trials are scored on, never trained on",
    )
    beta: Annotated[tuple[Beta, Beta], AfterValidator(_low_to_high)] = Field(
        (0.05, 0.5), description="[low, high] of DPO beta, searched on a log scale"
    )
    learning_rate: Annotated[tuple[LearningRate, LearningRate], AfterValidator(_low_to_high)] = (
        Field((1e-4, 1e-2), description="[low, high] of the learning rate, on a log scale")
    )
    epochs: Annotated[tuple[Epochs, Epochs], AfterValidator(_low_to_high)] = Field(
        (1, 5), description="[low, high] of the epochs, whole numbers"
    )
    ranks: Annotated[list[Annotated[int, Field(ge=1, le=512)]], AfterValidator(_distinct)] = Field(
        [4, 8, 16],
        min_length=1,
        max_length=8,
        description="LoRA ranks to try for a first "
        "version (a run from a live version keeps its rank)",
    )
    target_modules: Annotated[list[ModuleSet], AfterValidator(_distinct)] = Field(
        [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]],
        min_length=1,
        max_length=8,
        description="sets of module names to adapt, tried for a first version "
        "(a run from a live version keeps its modules)",
    )


class GatePolicy(BaseModel):
    """What a candidate must show on held-out feedback, against the live version."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_accuracy: float = Field(
        0.6, ge=0, le=1, description="held-out preference accuracy a candidate must reach"
    )
    promote_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="accuracy gain over the live version to auto-promote "
        "(with a judge, its significant win over the live version's answers stands for it)",
    )
    confidence_z: float = Field(
        2.33,
        ge=0,
        le=10,
        description="the per-pair reward-margin gain over the live version must be positive "
        "at this many standard errors (2.33: one-sided 99%); with a judge, the sequential "
        "test of the judged win rate errs at most as often as this one-sided level",
    )
    max_kl_from_live: float = Field(
        2.0, gt=0, description="mean per-token KL (nats) from the live version, on the prompt set"
    )
    max_kl_from_base: float = Field(
        4.0, gt=0, description="mean per-token KL (nats) from the base model, on the prompt set"
    )
    min_win_rate: float = Field(
        0.6,
        ge=0,
        le=1,
        description="with a judge: the share of held-out prompts where the "
        "judge prefers the candidate's answer to the live version's (of those it decides); "
        "and the sequential test (judged_samples) must decide it better at confidence_z",
    )
    judged_samples: int = Field(
        8,
        ge=0,
        le=64,
        description="with a judge: besides the greedy answers, at most this "
        "many answers per held-out prompt sampled at the serving temperature (sampling's, "
        "else 1) from both versions, each pair compared. Drawn one answer per prompt at a "
        "time until a sequential test of the win rate decides better or worse at "
        "confidence_z; still undecided after the last, the candidate is not promoted. The "
        "held-out split keeps enough prompts that these comparisons could show a candidate "
        "winning 3 in 4 better (at 2.33: 42 comparisons, so 5 prompts at 8)",
    )
    length_control: bool = Field(
        True,
        description="with a judge: comparisons where the candidate's answer is longer "
        "than the live version's by more than length_tolerance are left out of the win rate "
        "(and reported apart), so that a candidate cannot win by answering longer",
    )
    length_tolerance: float = Field(
        0.25,
        ge=0,
        le=10,
        description="how much longer (a share of the live answer's words, "
        "and at least 2 words) a candidate's answer may be and still count as the same length",
    )
    max_length_ratio: float | None = Field(
        None,
        gt=1,
        le=100,
        description="with a judge: the candidate's mean answer length (in "
        "words, greedy answers on held-out prompts) at most this many times the live "
        "version's; none: no such check",
    )
    unchanged_kl: float = Field(
        1e-5,
        ge=0,
        le=1,
        description="a candidate whose mean per-token KL from the live "
        "version (or the base, for a first version) is below this, or whose answers all equal "
        "the live version's, changed nothing: its run ends `unchanged`, not rejected by the "
        "gate",
    )


class TrainingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, description="the trainer considers this adapter")
    auto_promote: bool = Field(True, description="promote a candidate that passes the gate")
    record_completions: bool = Field(
        False, description="keep prompts and outputs so scores can name a completion_id"
    )
    min_pairs: int = Field(
        32,
        ge=2,
        le=100_000,
        description="preference pairs the pending feedback must make "
        "before a run (a preference is one; the scores of one prompt make one for each two "
        "answers score_gap apart, up to max_pairs_per_prompt; other feedback does not count)",
    )
    max_wait_s: int = Field(
        3600,
        ge=0,
        le=MAX_WAIT_S,
        description="run with fewer pairs (at least 4) once "
        "feedback is this old; a score that makes no pair this long after it arrived is set "
        "aside as unpaired (at most 30 days)",
    )
    score_gap: float = Field(
        0.3,
        gt=0,
        le=1,
        description="two answers to one prompt make a pair when their "
        "scores differ by at least this (every such pair, up to max_pairs_per_prompt; answers "
        "equal up to whitespace never pair)",
    )
    max_pairs_per_prompt: int = Field(
        8,
        ge=1,
        le=120,
        description="pairs one prompt's scores make at most (k answers make "
        "k*(k-1)/2 at most), the widest score gaps first, so no prompt outweighs the others: "
        "8 answers at a 25% pass rate make 12 pairs when 2 pass, and capped at 8 they still "
        "use every answer",
    )
    min_steps: int = Field(
        32,
        ge=1,
        le=100_000,
        description="optimizer steps a run takes at least: epochs over "
        "few pairs are few steps (3 epochs of 12 pairs in batches of 8: 6 steps, too few to "
        "move a LoRA), so a run trains max(min_steps, epochs * batches) steps",
    )
    replay_pairs: int = Field(
        64,
        ge=0,
        le=100_000,
        description="pairs from this adapter's consumed feedback (the "
        "newest first) trained on again alongside a run's own, so a round adds to what earlier "
        "rounds taught; 0: a run trains on its own feedback alone",
    )
    held_out_fraction: float = Field(0.25, ge=0.05, le=0.5)
    beta: float = Field(0.1, gt=0, le=10, description="DPO beta")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(8, ge=1, le=512)
    rank: int = Field(8, ge=1, le=512, description="LoRA rank of a first version")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seeds the split, the training and the sampling: a run can be repeated",
    )
    train: ComputePolicy = Field(
        default_factory=ComputePolicy,
        description="how a run spends memory on the trainer's "
        "device: gradient checkpointing and the micro-batch",
    )
    golden_prompts: list[GoldenPrompt] = Field(
        default_factory=list,
        max_length=256,
        description="user messages to measure drift on; default: the held-out prompts",
    )
    gate: GatePolicy = Field(default_factory=GatePolicy)
    judge: JudgePolicy | None = Field(
        None,
        description="what scores answers when no one else does: rules, an LLM, or a "
        "Python function",
    )
    sampling: SamplingPolicy | None = Field(
        None, description="learn from the live version's own answers, judged (needs judge)"
    )
    search: SearchPolicy | None = Field(
        None,
        description="try several hyperparameter settings per run and keep the best; "
        "rank and target modules come from here for a first version",
    )
    rollout: RolloutPolicy | None = Field(
        None,
        description="a new version, trained or uploaded, earns its traffic step by step "
        "on judged live answers (needs judge) instead of going live at once",
    )
    transfer: TransferPolicy | None = Field(
        None,
        description="how the adapter is carried to a new base model by distillation, "
        "and the gate the carried version must pass (none: the defaults)",
    )

    @model_validator(mode="after")
    def _sampling_has_a_judge(self) -> TrainingPolicy:
        if self.sampling is not None and self.judge is None:
            raise ValueError("sampling needs a judge to score the answers")
        if self.rollout is not None and self.judge is None:
            raise ValueError("a rollout needs a judge to compare the versions' answers")
        return self

    @classmethod
    def stored(cls, value: dict | None) -> TrainingPolicy:
        """A policy as the registry keeps it (None: never set, so the defaults)."""
        return cls.model_validate(value or {})

    @classmethod
    def admitted(cls, value: Any, *, judge_key_variables: tuple[str, ...]) -> TrainingPolicy:
        """A policy being set, checked against the operator's settings, its patterns compiled
        in a bounded child process: blocking, so never on an event loop (pydantic's
        ValidationError when it is refused)."""
        return cls.model_validate(value, context=Admission(judge_key_variables))
