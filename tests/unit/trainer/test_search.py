"""Hyperparameter search on the real tiny model: trials train real adapters, a real scorer
scores them on a validation split of the training pairs, and the best one is the output.

Kept small (a dozen pairs, one epoch, two or three trials): every trial is a real DPO run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.names import ADAPTER_FILES, CONFIG_FILE, MAX_TAG_CHARS
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.search_trials import SearchTrial, search_trial_tags, search_trials_from_tags
from loraloop.adapters.training_policy import SearchPolicy, TrainingPolicy
from loraloop.adapters.validation import validate_adapter
from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, answers, user_messages
from loraloop.trainer import search as search_module
from loraloop.trainer.dpo import train_dpo
from loraloop.trainer.evaluate import PreferenceScore, Scorer
from loraloop.trainer.pairs import PreferencePair, split_held_out
from loraloop.trainer.search import SearchOutcome, objective_value, search_dpo

LINEAGE_TAGS = 8  # run, pairs, feedback, beta, learning_rate, epochs, batch_size, seed
MAX_VERSION_TAGS = 64  # what the admin API accepts on a version
TAG_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def policy_with(search: dict | None = None, **fields) -> TrainingPolicy:
    """The demo policy, drift measured on two prompts (cheap trials), searching one epoch."""
    return TrainingPolicy.model_validate(
        {
            **DEMO_POLICY,
            "golden_prompts": user_messages(2, seed=3),
            **fields,
            "search": {
                "trials": 2,
                "epochs": [1, 1],
                "learning_rate": [0.005, 0.05],
                **(search or {}),
            },
        }
    )


def marker_pairs(count: int, seed: int) -> list[PreferencePair]:
    messages, texts = user_messages(count, seed), answers(count, seed)
    return [
        PreferencePair(StoredPrompt.chat([("user", m)]), f"{MARKER} {t}", t, (i,))
        for i, (m, t) in enumerate(zip(messages, texts, strict=True))
    ]


def without_seconds(trials) -> list[tuple]:
    return [
        (
            t.number,
            t.state,
            t.beta,
            t.learning_rate,
            t.epochs,
            t.rank,
            t.target_modules,
            t.validation_accuracy,
            t.validation_margin,
            t.kl_from_base,
            t.kl_from_live,
        )
        for t in trials
    ]


def adapter_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


class RecordingScorer(Scorer):
    """The real scorer, also keeping what it was asked to score and measure drift on."""

    def __init__(self, base_model: Path) -> None:
        super().__init__(base_model)
        self.scored: list[PreferencePair] = []
        self.drift_prompts: list[StoredPrompt] = []

    def preference(self, adapter, pairs):
        self.scored.extend(pairs)
        return super().preference(adapter, pairs)

    def mean_token_kl(self, adapter_p, adapter_q, prompts, max_new_tokens=16):
        self.drift_prompts.extend(prompts)
        return super().mean_token_kl(adapter_p, adapter_q, prompts, max_new_tokens)


@pytest.fixture(scope="module")
def scorer(demo_model) -> RecordingScorer:
    return RecordingScorer(demo_model)


@pytest.fixture(scope="module")
def split():
    """(train, held_out) as the sidecar makes them: the search only ever gets `train`."""
    return split_held_out(marker_pairs(12, seed=7), 0.25, seed=0)


@pytest.fixture(scope="module")
def parent(adapter_dirs) -> Path:
    return adapter_dirs["acme/support"]


def recorded_search(
    scorer: RecordingScorer,
    base_model: Path,
    parent: Path | None,
    train: list[PreferencePair],
    policy: TrainingPolicy,
    output: Path,
):
    """search_dpo, keeping the pairs each trial trained on, the pairs scored, the prompts
    drift was measured on, and the progress reported."""
    trained: list[list[PreferencePair]] = []

    def recording_train_dpo(base, parent_adapter, pairs, *args, **kwargs):
        trained.append(list(pairs))
        return train_dpo(base, parent_adapter, pairs, *args, **kwargs)

    progress: list[dict] = []
    scorer.scored.clear()
    scorer.drift_prompts.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "train_dpo", recording_train_dpo)
        outcome = search_dpo(scorer, parent, train, policy, output, on_progress=progress.append)
    return Recorded(
        outcome, output, trained, list(scorer.scored), list(scorer.drift_prompts), progress
    )


@dataclass(frozen=True)
class Recorded:
    outcome: SearchOutcome
    output: Path
    trained: list[list[PreferencePair]]
    scored: list[PreferencePair]
    drift_prompts: list[StoredPrompt]
    progress: list[dict]


RANKS, MODULES = [2, 4], [["q_proj"], ["v_proj", "o_proj"]]
FIRST_VERSION = policy_with({"trials": 3, "ranks": RANKS, "target_modules": MODULES})


@pytest.fixture(scope="module")
def first_search(demo_model, scorer, split, tmp_path_factory) -> Recorded:
    """A first version's search: three trials over ranks and target modules too."""
    output = tmp_path_factory.mktemp("search") / "v1"
    return recorded_search(scorer, demo_model, None, split[0], FIRST_VERSION, output)


def test_trials_score_on_training_prompts_they_did_not_train_on(split, first_search):
    train, held_out = split
    held_prompts = {pair.prompt for pair in held_out}
    validation = set(first_search.scored)
    assert len(first_search.trained) == len(first_search.outcome.trials)
    assert validation and len(validation) == first_search.outcome.validation_pairs
    for pairs in first_search.trained:  # each trial: the training pairs less the validation
        assert set(pairs) | validation == set(train) and not set(pairs) & validation
        assert {p.prompt for p in pairs}.isdisjoint({p.prompt for p in validation})
    assert held_prompts.isdisjoint({pair.prompt for pair in validation})
    assert held_prompts.isdisjoint(first_search.drift_prompts)


def test_a_first_version_tries_ranks_and_target_modules_within_the_budget(demo_model, first_search):
    outcome, output = first_search.outcome, first_search.output
    assert len(outcome.trials) == 3 == outcome.metrics["search_trials"]
    assert all(
        t.rank in RANKS and list(t.target_modules) in MODULES and t.kl_from_live is None
        for t in outcome.trials
    )
    config = json.loads((output / CONFIG_FILE).read_text())
    assert config["r"] == outcome.best.rank
    assert sorted(config["target_modules"]) == sorted(outcome.best.target_modules)
    validate_adapter(
        {name: output / name for name in ADAPTER_FILES},
        BaseModelInfo.load(demo_model),
        max_rank=64,
        max_bytes=1 << 30,
    )


def test_the_output_holds_the_best_trials_adapter(demo_model, first_search, tmp_path):
    outcome, output = first_search.outcome, first_search.output
    assert sorted(p.name for p in output.iterdir()) == sorted(ADAPTER_FILES)
    best = outcome.best
    assert best.state == "feasible" and outcome.metrics["search_best_trial"] == best.number
    values = [objective_value_of(t, outcome.validation_pairs) for t in outcome.trials]
    assert objective_value_of(best, outcome.validation_pairs) == max(values)
    # Training the best trial's settings again gives the output's very bytes.
    train_dpo(
        demo_model,
        None,
        first_search.trained[best.number],
        outcome.policy,
        tmp_path / "best",
        target_modules=best.target_modules,
    )
    assert adapter_bytes(tmp_path / "best") == adapter_bytes(output)
    assert (
        outcome.policy.beta,
        outcome.policy.learning_rate,
        outcome.policy.epochs,
        outcome.policy.rank,
    ) == (best.beta, best.learning_rate, best.epochs, best.rank)


def test_the_same_seed_gives_the_same_trials_and_bytes(
    demo_model, scorer, split, first_search, tmp_path
):
    again = search_dpo(scorer, None, split[0], FIRST_VERSION, tmp_path / "again")
    assert without_seconds(again.trials) == without_seconds(first_search.outcome.trials)
    assert adapter_bytes(tmp_path / "again") == adapter_bytes(first_search.output)


def test_progress_reports_each_trial_start_steps_and_end(first_search):
    progress = first_search.progress
    phases = [(p["search"], p["trial"]) for p in progress if "search" in p]
    assert phases == [
        ("start", 0),
        ("done", 0),
        ("start", 1),
        ("done", 1),
        ("start", 2),
        ("done", 2),
    ]
    steps = [p for p in progress if "step" in p]
    assert steps and {p["trial"] for p in steps} == {0, 1, 2}


def test_a_run_from_a_parent_keeps_its_rank_and_modules(
    demo_model, parent, scorer, split, tmp_path
):
    outcome = search_dpo(scorer, parent, split[0], policy_with({"trials": 1}), tmp_path / "v2")
    assert [(t.rank, t.target_modules) for t in outcome.trials] == [(None, None)]
    assert outcome.best.kl_from_live is not None
    mine, theirs = (json.loads((d / CONFIG_FILE).read_text()) for d in (tmp_path / "v2", parent))
    assert (mine["r"], sorted(mine["target_modules"])) == (
        theirs["r"],
        sorted(theirs["target_modules"]),
    )


CHEAPEST = {"ranks": [2], "target_modules": [["q_proj"]]}


def test_no_trial_starts_after_the_seconds_budget_but_one_always_runs(
    demo_model, scorer, split, tmp_path
):
    policy = policy_with({**CHEAPEST, "trials": 5, "max_seconds": 0.001})
    outcome = search_dpo(scorer, None, split[0], policy, tmp_path / "v1")
    assert [t.number for t in outcome.trials] == [0]
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted(ADAPTER_FILES)


def test_when_every_trial_drifts_the_least_drifted_goes_to_the_gate(
    demo_model, scorer, split, tmp_path
):
    policy = policy_with(CHEAPEST, gate={"max_kl_from_base": 1e-9})
    outcome = search_dpo(scorer, None, split[0], policy, tmp_path / "v1")
    assert [t.state for t in outcome.trials] == ["drifted", "drifted"]
    assert outcome.best == min(outcome.trials, key=lambda t: t.kl_from_base)


def test_a_search_needs_a_second_prompt_to_validate_on(demo_model, scorer, tmp_path):
    prompt = StoredPrompt.chat([("user", "hello")])
    pairs = [PreferencePair(prompt, f"{MARKER} {n}", str(n), (n,)) for n in range(4)]
    with pytest.raises(ValueError, match="all have the same prompt"):
        search_dpo(scorer, None, pairs, policy_with(), tmp_path / "v1")


def test_train_dpo_refuses_modules_the_base_lacks_or_a_parent_would_override(
    demo_model, parent, split, tmp_path
):
    policy = policy_with()
    with pytest.raises(ValueError, match="no linear layer named c_attn"):
        train_dpo(
            demo_model, None, split[0], policy, tmp_path / "a", target_modules=["q_proj", "c_attn"]
        )
    with pytest.raises(ValueError, match="keeps its target modules"):
        train_dpo(demo_model, parent, split[0], policy, tmp_path / "b", target_modules=["q_proj"])


def objective_value_of(trial: SearchTrial, pairs: int) -> float:
    return objective_value(
        PreferenceScore(trial.validation_accuracy, trial.validation_margin, (0.0,) * pairs)
    )


def test_accuracy_decides_and_the_margin_breaks_ties():
    def score(accuracy: float, margin: float, pairs: int = 4) -> float:
        return objective_value(PreferenceScore(accuracy, margin, (margin,) * pairs))

    assert score(0.75, -1e9) > score(0.5, 1e9)  # one pair more right beats any margin
    assert score(0.5, 2.0) > score(0.5, 1.0) > score(0.5, -3.0)


# --- The policy ---------------------------------------------------------------------------------


def test_search_defaults_and_a_command_line_edit_are_valid():
    policy = TrainingPolicy.model_validate({"search": {"trials": 4}})
    assert policy.search == SearchPolicy(trials=4)
    assert (policy.search.beta, policy.search.epochs, policy.search.ranks) == (
        (0.05, 0.5),
        (1, 5),
        [4, 8, 16],
    )
    stored = policy.model_dump(mode="json")
    assert TrainingPolicy.stored(stored) == policy
    assert TrainingPolicy().search is None


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"beta": [0.5, 0.05]}, "runs from high to low; give the low end first"),
        ({"learning_rate": [0, 0.1]}, "greater than 0"),
        ({"epochs": [3, 101]}, "less than or equal to 100"),
        ({"trials": 0}, "greater than or equal to 1"),
        ({"trials": 65}, "less than or equal to 64"),
        ({"max_seconds": 0}, "greater than 0"),
        ({"validation_fraction": 0.6}, "less than or equal to 0.5"),
        ({"ranks": [4, 4]}, "4 appears more than once"),
        ({"ranks": []}, "at least 1 item"),
        ({"target_modules": [["q-proj"]]}, "should match pattern"),
        ({"target_modules": [["q_proj", "q_proj"]]}, "q_proj appears more than once"),
        (
            {"target_modules": [[f"module_{n:02d}_{'x' * 50}" for n in range(5)]]},
            f"more than {MAX_TAG_CHARS} characters",
        ),
        ({"epochs": [1, 2, 3]}, "at most 2 items"),
        ({"trails": 4}, "Extra inputs are not permitted"),
    ],
)
def test_bad_search_settings_are_refused_with_the_reason(search, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainingPolicy.model_validate({"search": search})


def test_the_trial_table_fits_a_versions_tags_and_reads_back():
    module_sets = [tuple(f"m{s}_{n}_{'x' * 20}" for n in range(8)) for s in range(8)]
    trials = [
        SearchTrial(
            n,
            "drifted" if n % 3 else "feasible",
            0.123456 + n,
            1.23456e-05,
            100,
            512,
            module_sets[n % 8],
            0.666666,
            -12.3456789,
            1234.5678,
            None if n % 2 else 0.000123456,
            86399.99,
        )
        for n in range(64)
    ]
    tags = search_trial_tags(trials)
    assert len(tags) + LINEAGE_TAGS <= MAX_VERSION_TAGS
    assert all(TAG_NAME.match(name) and len(value) <= MAX_TAG_CHARS for name, value in tags.items())
    read = search_trials_from_tags({**tags, "run": "7", "beta": "0.1"})
    assert [t.target_modules for t in read] == [t.target_modules for t in trials]
    assert [(t.number, t.state, t.epochs, t.rank) for t in read] == [
        (t.number, t.state, t.epochs, t.rank) for t in trials
    ]
    assert read[0].validation_margin == -12.35 and read[0].kl_from_live == 0.0001235
    assert read[1].kl_from_live is None
    assert search_trials_from_tags({"run": "7"}) == []
