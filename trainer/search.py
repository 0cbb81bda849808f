"""Hyperparameter search for one run: several DPO trainings, each scored on a validation split
of the run's training pairs; the best one's adapter becomes the run's candidate.

The validation split is carved from the training pairs, whole prompts at a time
(pairs.split_held_out): the held-out pairs the gate decides on are never trained on nor
looked at here, so the gate's verdict on the chosen trial stays an honest one.

The objective is the gate's first figure, preference accuracy, on the validation pairs, with
ties broken by its second, the mean margin. Optuna maximises one number, so the margin is
squashed into (-1, 1) and scaled below half of one pair's share of the accuracy: it orders
trials of equal accuracy and never reorders trials of different accuracy. The gate's drift
bounds are a constraint: a trial whose mean per-token KL from the base model (or from the
parent) exceeds the policy's bound is infeasible, TPE steers away from it, and it is never
chosen over a feasible one. If every trial drifts, the one that drifted least goes to the
gate, which refuses it with the figures.

TPE is seeded with the policy's seed and every trial trains with that seed, so the same pairs
and policy give the same trials and the same adapter bytes, unless the seconds budget stops
a slower machine sooner.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.search_trials import SearchTrial, search_trial_tags
from loraloop.adapters.training_policy import SearchPolicy, TrainingPolicy

from .dpo import TrainResult, train_dpo
from .evaluate import PreferenceScore, Scorer
from .gate import golden_prompts
from .lora import ProgressCallback
from .pairs import PreferencePair, Prompt, split_held_out

logger = logging.getLogger(__name__)

# A guard against clear drift, not the gate's measurement: a few prompts keep trials cheap.
MAX_DRIFT_PROMPTS = 8


@dataclass(frozen=True)
class SearchOutcome:
    result: TrainResult  # the best trial's training
    policy: TrainingPolicy  # the run's policy with the best trial's hyperparameters
    trials: tuple[SearchTrial, ...]
    best: SearchTrial
    validation_pairs: int
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "search_trials": float(len(self.trials)),
            "search_best_trial": float(self.best.number),
            "search_validation_pairs": float(self.validation_pairs),
            "search_best_validation_accuracy": self.best.validation_accuracy,
            "search_best_validation_margin": self.best.validation_margin,
            "search_seconds": self.seconds,
        }

    @property
    def tags(self) -> dict[str, str]:
        return search_trial_tags(self.trials)


def search_dpo(
    scorer: Scorer,
    parent_adapter: Path | None,
    pairs: Sequence[PreferencePair],
    policy: TrainingPolicy,
    output_dir: Path,
    *,
    on_progress: ProgressCallback | None = None,
) -> SearchOutcome:
    """Search policy.search's space on `pairs` and write the best trial's adapter files,
    nothing else, into `output_dir` (new or empty). Trials train on the scorer's base."""
    search = policy.search
    if search is None:
        raise ValueError("the policy has no search settings")
    train, validation = split_held_out(pairs, search.validation_fraction, policy.seed)
    if not validation:
        raise ValueError(
            f"a search scores trials on prompts they did not train on, and these "
            f"{len(pairs)} training pairs all have the same prompt"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; give search_dpo a new directory")
    started = time.monotonic()
    # Inside the output directory: whatever clears a killed run's output clears its trials.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix="trials-") as scratch:
        objective = _Objective(
            scorer, parent_adapter, train, validation, policy, search, Path(scratch), on_progress
        )
        study = _study(search, policy.seed)
        study.optimize(objective, n_trials=search.trials, timeout=search.max_seconds)
        chosen = objective.done[_best_number(study, objective)]
        for name in ADAPTER_FILES:
            (Path(scratch) / str(chosen.row.number) / name).rename(output_dir / name)
    best = chosen.row
    logger.info(
        "search: trial %d of %d chosen (validation accuracy %.3g, margin %.3g)",
        best.number,
        len(objective.done),
        best.validation_accuracy,
        best.validation_margin,
    )
    return SearchOutcome(
        chosen.result,
        chosen.policy,
        tuple(done.row for done in objective.done.values()),
        best,
        len(validation),
        time.monotonic() - started,
    )


def _study(search: SearchPolicy, seed: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged here, once
    # Half the budget (up to TPE's usual 10) samples at random before TPE models the rest.
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=min(10, max(1, search.trials // 2))
    )
    return optuna.create_study(direction="maximize", sampler=sampler)


def _best_number(study: optuna.Study, objective: _Objective) -> int:
    try:
        return study.best_trial.number  # feasible trials only
    except ValueError:  # every trial drifted too far
        return min(objective.done, key=lambda number: (objective.done[number].excess, number))


def objective_value(score: PreferenceScore) -> float:
    """Accuracy, ties broken by the mean margin (see the module docstring): the squashed
    margin is below 1 / (2n + 1) in size, less than half of one pair's 1 / n."""
    squashed = score.mean_margin / (1 + abs(score.mean_margin))
    return score.accuracy + squashed / (2 * len(score.margins) + 1)


@dataclass(frozen=True)
class _Trained:
    """One finished trial: its row of the table, its training, the policy it trained with,
    and how many nats it drifted past the tighter bound (<= 0: within)."""

    row: SearchTrial
    result: TrainResult
    policy: TrainingPolicy
    excess: float


class _Objective:
    """One call, one trial: train its settings into their own directory, score them on the
    validation pairs, measure their drift, and record the row."""

    def __init__(
        self,
        scorer: Scorer,
        parent: Path | None,
        train: list[PreferencePair],
        validation: list[PreferencePair],
        policy: TrainingPolicy,
        search: SearchPolicy,
        scratch: Path,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.scorer, self.parent = scorer, parent
        self.train, self.validation, self.policy, self.search = train, validation, policy, search
        self.scratch, self.on_progress = scratch, on_progress
        self.drift_prompts = _drift_prompts(policy, validation)
        self.done: dict[int, _Trained] = {}  # by trial number

    def __call__(self, trial: optuna.Trial) -> float:
        settings = _suggest(trial, self.search, first_version=self.parent is None)
        modules = settings.pop("target_modules", None)
        self._report(
            "start",
            {
                "trial": trial.number,
                **settings,
                "target_modules": ",".join(modules or ["(parent's)"]),
            },
        )
        started = time.monotonic()
        policy = self.policy.model_copy(update=settings)
        adapter = self.scratch / str(trial.number)
        result = train_dpo(
            self.scorer.base,
            self.parent,
            self.train,
            policy,
            adapter,
            on_progress=self._steps_of(trial.number),
            target_modules=modules,
        )
        score = self.scorer.preference(adapter, self.validation)
        kl_base, kl_live, excess = self._drift(adapter)
        trial.set_constraint("kl_over_bound", excess)
        row = SearchTrial(
            trial.number,
            "feasible" if excess <= 0 else "drifted",
            policy.beta,
            policy.learning_rate,
            policy.epochs,
            settings.get("rank"),
            modules,
            score.accuracy,
            score.mean_margin,
            kl_base,
            kl_live,
            time.monotonic() - started,
        )
        self.done[row.number] = _Trained(row, result, policy, excess)
        self._report(
            "done",
            {
                "trial": row.number,
                "state": row.state,
                "validation_accuracy": row.validation_accuracy,
                "validation_margin": row.validation_margin,
                "kl_from_base": kl_base,
                "seconds": row.seconds,
            },
        )
        return objective_value(score)

    def _drift(self, adapter: Path) -> tuple[float, float | None, float]:
        """KL from the base and from the parent, and how far the worse is past its bound."""
        gate = self.policy.gate
        kl_base = self.scorer.mean_token_kl(adapter, None, self.drift_prompts)
        if self.parent is None:
            return kl_base, None, kl_base - gate.max_kl_from_base
        kl_live = self.scorer.mean_token_kl(adapter, self.parent, self.drift_prompts)
        return (
            kl_base,
            kl_live,
            max(kl_base - gate.max_kl_from_base, kl_live - gate.max_kl_from_live),
        )

    def _steps_of(self, number: int) -> ProgressCallback:
        def report(step: dict) -> None:
            if self.on_progress is not None:
                self.on_progress({"trial": number, **step})

        return report

    def _report(self, phase: str, figures: dict) -> None:
        logger.info(
            "search trial %s: %s",
            phase,
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
            ),
        )
        if self.on_progress is not None:
            self.on_progress({"search": phase, **figures})


def _suggest(trial: optuna.Trial, search: SearchPolicy, *, first_version: bool) -> dict:
    """The trial's policy fields, and target_modules (a tuple) for a first version."""
    settings: dict[str, Any] = {  # keyword arguments of the trial's policy
        "beta": trial.suggest_float("beta", *search.beta, log=True),
        "learning_rate": trial.suggest_float("learning_rate", *search.learning_rate, log=True),
        "epochs": trial.suggest_int("epochs", *search.epochs),
    }
    if first_version:  # a run from a parent keeps the parent's rank and modules
        settings["rank"] = trial.suggest_categorical("rank", search.ranks)
        # Optuna's choices are plain values: a module set is one comma-joined string.
        modules = trial.suggest_categorical(
            "target_modules", [",".join(names) for names in search.target_modules]
        )
        settings["target_modules"] = tuple(modules.split(","))
    return settings


def _drift_prompts(policy: TrainingPolicy, validation: Sequence[PreferencePair]) -> list[Prompt]:
    """The gate's drift prompts where the policy names them, else validation prompts: never
    the held-out ones."""
    prompts = golden_prompts(policy) or list(dict.fromkeys(pair.prompt for pair in validation))
    return prompts[:MAX_DRIFT_PROMPTS]
