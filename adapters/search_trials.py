"""What a policy's hyperparameter search tried, as the version it made records it: the
trial table, packed into version tags (each value within MAX_TAG_CHARS), and read back for
`loraloop adapters runs`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .names import MAX_TAG_CHARS

TRIAL_TAGS = "search.trials."  # + chunk number: JSON arrays of trial rows, in trial order
MODULE_TAGS = "search.modules."  # + index: a module set, which trial rows name by its index


@dataclass(frozen=True)
class SearchTrial:
    number: int
    state: Literal["feasible", "drifted"]  # drifted: past the gate's KL bounds
    beta: float
    learning_rate: float
    epochs: int
    rank: int | None  # None with target_modules None: the parent's, kept
    target_modules: tuple[str, ...] | None
    validation_accuracy: float
    validation_margin: float
    kl_from_base: float
    kl_from_live: float | None  # None: no parent
    seconds: float


def search_trial_tags(trials: Sequence[SearchTrial]) -> dict[str, str]:
    """The trial table as version tags, each within MAX_TAG_CHARS. Figures keep 4
    significant digits. At most 8 module sets and 64 trials (two or more rows a tag) stay
    well within the 64 tags a version may carry."""
    sets = list(dict.fromkeys(t.target_modules for t in trials if t.target_modules))
    tags = {f"{MODULE_TAGS}{index}": ",".join(names) for index, names in enumerate(sets)}
    rows = [json.dumps(_row(trial, sets), separators=(",", ":")) for trial in trials]
    chunks: list[list[str]] = [[]]
    for row in rows:
        if chunks[-1] and len(",".join([*chunks[-1], row])) + 2 > MAX_TAG_CHARS:
            chunks.append([])
        chunks[-1].append(row)
    return tags | {
        f"{TRIAL_TAGS}{index}": f"[{','.join(chunk)}]"
        for index, chunk in enumerate(chunks)
        if chunk
    }


def search_trials_from_tags(tags: Mapping[str, str]) -> list[SearchTrial]:
    """The trial table that `search_trial_tags` recorded; empty when the version has none."""
    sets = {
        int(name.removeprefix(MODULE_TAGS)): tuple(value.split(","))
        for name, value in tags.items()
        if name.startswith(MODULE_TAGS)
    }
    chunks = sorted(
        (int(name.removeprefix(TRIAL_TAGS)), value)
        for name, value in tags.items()
        if name.startswith(TRIAL_TAGS)
    )
    return [_trial(row, sets) for _, chunk in chunks for row in json.loads(chunk)]


def _row(trial: SearchTrial, sets: list[tuple[str, ...]]) -> list:
    modules = None if trial.target_modules is None else sets.index(trial.target_modules)
    return [
        trial.number,
        trial.state,
        _short(trial.beta),
        _short(trial.learning_rate),
        trial.epochs,
        trial.rank,
        modules,
        _short(trial.validation_accuracy),
        _short(trial.validation_margin),
        _short(trial.kl_from_base),
        None if trial.kl_from_live is None else _short(trial.kl_from_live),
        _short(trial.seconds),
    ]


def _trial(row: list, sets: Mapping[int, tuple[str, ...]]) -> SearchTrial:
    (
        number,
        state,
        beta,
        rate,
        epochs,
        rank,
        modules,
        accuracy,
        margin,
        kl_from_base,
        kl_from_live,
        seconds,
    ) = row
    return SearchTrial(
        number,
        state,
        beta,
        rate,
        epochs,
        rank,
        None if modules is None else sets[modules],
        accuracy,
        margin,
        kl_from_base,
        kl_from_live,
        seconds,
    )


def _short(value: float) -> float:
    return float(f"{value:.4g}")
