"""The trainer's machine-learning core on a real tiny model: feedback to pairs, a DPO run, the
measurements and the promotion gate. No mocks: the generated demo model, real PEFT adapters.

The central scenario teaches a habit the parent adapter does not have: begin every answer
with a marker word. The candidate must pick it up on prompts it never trained on, and the
gate must promote it; the same pairs with their labels scrambled must not be promoted.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.names import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import GatePolicy, TrainingPolicy
from loraloop.adapters.validation import validate_adapter
from loraloop.serve.cli.demo import DEMO_POLICY as DEMO_POLICY_FIELDS
from loraloop.serve.cli.demo import MARKER, answers, user_messages
from loraloop.trainer.dpo import train_dpo
from loraloop.trainer.evaluate import Scorer, weights_changed
from loraloop.trainer.gate import evaluate_candidate, judge_answers, judged_checks
from loraloop.trainer.judges import Comparison, judge_for
from loraloop.trainer.pairs import (
    PreferencePair,
    ScoredCompletion,
    build_pairs,
    pairs_from_scores,
    split_held_out,
)
from loraloop.trainer.rendering import encode_pair

from ...support import hanging_endpoint

DEMO_POLICY = TrainingPolicy.model_validate(DEMO_POLICY_FIELDS)


def marker_pairs(count: int, seed: int) -> list[PreferencePair]:
    """The marker task as chat pairs: chosen = MARKER + a short answer, rejected = the same
    answer without it; one distinct user message per pair."""
    messages, texts = user_messages(count, seed), answers(count, seed)
    return [
        PreferencePair(StoredPrompt.chat([("user", message)]), f"{MARKER} {text}", text, (index,))
        for index, (message, text) in enumerate(zip(messages, texts, strict=True))
    ]


def text(prompt: str) -> StoredPrompt:
    return StoredPrompt(text=prompt)


def swapped(pair: PreferencePair) -> PreferencePair:
    return PreferencePair(pair.prompt, pair.rejected, pair.chosen, pair.feedback_ids)


@pytest.fixture(scope="module")
def base_model(demo_model) -> Path:
    return demo_model


@pytest.fixture(scope="module")
def parent(adapter_dirs) -> Path:
    """A random rank-8 adapter: the live version that training starts from."""
    return adapter_dirs["acme/support"]


@pytest.fixture(scope="module")
def scorer(base_model) -> Scorer:
    return Scorer(base_model)


@pytest.fixture(scope="module")
def marker_split():
    return split_held_out(marker_pairs(48, seed=7), DEMO_POLICY.held_out_fraction, seed=0)


@pytest.fixture(scope="module")
def marker_run(base_model, parent, marker_split, tmp_path_factory):
    train, _ = marker_split
    progress: list[dict] = []
    output = tmp_path_factory.mktemp("marker") / "v2"
    result = train_dpo(base_model, parent, train, DEMO_POLICY, output, on_progress=progress.append)
    return output, result, progress


def gate_run(scorer, candidate, live, held_out, result, policy=DEMO_POLICY, judge=None):
    return evaluate_candidate(
        scorer,
        candidate=candidate,
        live=live,
        held_out=held_out,
        drift_prompts=[pair.prompt for pair in held_out],
        train=result,
        policy=policy,
        judge=judge,
    )


def failed_checks(report) -> set[str]:
    return {check.name for check in report.checks if not check.passed}


# --- Pairs ------------------------------------------------------------------------------------


def test_scores_pair_every_two_answers_a_gap_apart():
    scored = [
        ScoredCompletion(text("p"), "ok", 0.5, feedback_id=3),
        ScoredCompletion(text("p"), "great", 0.9, feedback_id=1),
        ScoredCompletion(text("p"), "bad", 0.1, feedback_id=2),
        ScoredCompletion(text("q"), "fine", 0.6, feedback_id=4),
        ScoredCompletion(text("q"), "meh", 0.5, feedback_id=5),  # gap 0.1: below the threshold
        ScoredCompletion(text("r"), "alone", 1.0, feedback_id=6),
        ScoredCompletion(text("s"), "first", 0.8, feedback_id=8),  # ties: earliest id first
        ScoredCompletion(text("s"), "second", 0.8, feedback_id=9),
        ScoredCompletion(text("s"), "worst", 0.2, feedback_id=7),
    ]
    pairing = pairs_from_scores(scored, min_gap=0.3, max_per_prompt=8)
    assert pairing.pairs == [
        PreferencePair(text("p"), "great", "bad", (1, 2)),
        PreferencePair(text("p"), "great", "ok", (1, 3)),
        PreferencePair(text("p"), "ok", "bad", (2, 3)),
        PreferencePair(text("s"), "first", "worst", (7, 8)),
        PreferencePair(text("s"), "second", "worst", (7, 9)),
    ]
    assert pairing.unpaired == {"no_gap": 2, "alone": 1}
    assert pairs_from_scores(scored, min_gap=0.9, max_per_prompt=8).pairs == []


def test_build_pairs_merges_duplicates_and_drops_self_preference():
    chat = StoredPrompt.chat([("user", "hi")])
    preferences = [
        PreferencePair(chat, "a", "b", (5,)),
        PreferencePair(text("p"), "same", "same", (6,)),
        PreferencePair(chat, "a", "b", (2,)),
        PreferencePair(chat, "b", "a", (7,)),  # the opposite preference is a different pair
    ]
    scored = [ScoredCompletion(chat, "a", 0.9, 1), ScoredCompletion(chat, "b", 0.1, 3)]
    assert build_pairs(preferences, scored, min_score_gap=0.3, max_per_prompt=8).pairs == [
        PreferencePair(chat, "a", "b", (1, 2, 3, 5)),
        PreferencePair(chat, "b", "a", (7,)),
    ]


def test_held_out_split_is_deterministic_and_keeps_prompts_together():
    pairs = marker_pairs(40, seed=1)
    pairs += [PreferencePair(pair.prompt, "other", pair.rejected) for pair in pairs[:10]]
    train, held_out = split_held_out(pairs, 0.25, seed=3)
    assert (train, held_out) == split_held_out(list(pairs), 0.25, seed=3)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held_out})
    assert sorted(train + held_out, key=pairs.index) == pairs
    assert 10 <= len(held_out) <= 14  # about a quarter of 50
    assert split_held_out(pairs, 0.25, seed=4)[1] != held_out
    two_prompts = marker_pairs(2, seed=1)
    assert [len(side) for side in split_held_out(two_prompts, 0.05, seed=0)] == [1, 1]


def test_chat_pairs_render_as_served_with_end_of_turn(tokenizer):
    pair = PreferencePair(StoredPrompt.chat([("user", "hi")]), "yes", "no")
    encoded = encode_pair(tokenizer, pair)
    assert tokenizer.decode([*encoded.prompt, *encoded.chosen]) == (
        "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>"
    )
    plain = encode_pair(tokenizer, PreferencePair(text("say"), " yes", " no"))
    assert tokenizer.decode([*plain.prompt, *plain.chosen]) == "<|bos|>say yes"
    assert tokenizer.tokenize(MARKER) == [MARKER]


# --- The marker scenario ----------------------------------------------------------------------


def greedy_answers(base_model, tokenizer, adapters: dict[str, Path], prompts) -> dict[str, list]:
    """Greedy answers (8 tokens) of each adapter, with transformers + PEFT as served."""
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    names = list(adapters)
    model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    replies: dict[str, list] = {name: [] for name in names}
    for name in names:
        model.set_adapter(name)
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                prompt.template_messages(),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
            replies[name].append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))
    return replies


def test_marker_is_learned_on_unseen_prompts_and_promoted(
    base_model, tokenizer, parent, marker_split, marker_run, scorer
):
    train, held_out = marker_split
    output, result, _ = marker_run
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held_out})
    prompts = [pair.prompt for pair in held_out]
    replies = greedy_answers(base_model, tokenizer, {"parent": parent, "new": output}, prompts)
    learned = [
        new
        for old, new in zip(replies["parent"], replies["new"], strict=True)
        if new.startswith(MARKER) and not old.startswith(MARKER)
    ]
    assert len(learned) >= 0.75 * len(held_out), replies

    report = gate_run(scorer, output, parent, held_out, result)
    assert report.passed, report.failures()
    assert report.promote
    assert report.metrics["heldout_accuracy"] >= report.metrics["heldout_accuracy_live"] + 0.5
    assert report.metrics["margin_gain_lower_bound"] > 0
    json.dumps(report.metrics, allow_nan=False)  # recordable as it is


def test_progress_is_reported_every_step(marker_run, marker_split):
    _, result, progress = marker_run
    steps_per_epoch = -(-36 // DEMO_POLICY.batch_size)  # 36 training pairs
    assert result.steps == len(progress) == DEMO_POLICY.epochs * steps_per_epoch
    assert [p["step"] for p in progress] == list(range(1, result.steps + 1))
    assert set(progress[0]) == {"step", "loss", "reward_accuracy", "epoch"}
    assert progress[-1]["epoch"] == DEMO_POLICY.epochs
    assert result.final_loss < progress[0]["loss"]
    assert result.train_reward_accuracy > 0.8


def test_output_is_exactly_a_valid_adapter(base_model, parent, marker_run):
    output, result, _ = marker_run
    assert sorted(path.name for path in output.iterdir()) == sorted(ADAPTER_FILES)
    config = json.loads((output / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(base_model)
    facts = validate_adapter(
        {name: output / name for name in ADAPTER_FILES},
        BaseModelInfo.load(base_model),
        max_rank=64,
        max_bytes=1 << 30,
    )
    assert facts.rank == 8
    assert result.trainable_parameters == sum(
        tensor.numel() for tensor in load_file(output / WEIGHTS_FILE).values()
    )
    assert weights_changed(parent, output)


def test_same_inputs_give_the_same_bytes(base_model, parent, marker_split, marker_run, tmp_path):
    train, _ = marker_split
    output, _, _ = marker_run
    train_dpo(base_model, parent, train, DEMO_POLICY, tmp_path / "again")
    reseeded = DEMO_POLICY.model_copy(update={"seed": 1})  # another order of batches
    train_dpo(base_model, parent, train, reseeded, tmp_path / "reseeded")
    weights = (output / WEIGHTS_FILE).read_bytes()
    assert (tmp_path / "again" / WEIGHTS_FILE).read_bytes() == weights
    assert (tmp_path / "reseeded" / WEIGHTS_FILE).read_bytes() != weights


def test_drift_bounds_reject_a_far_candidate(scorer, parent, marker_split, marker_run):
    _, held_out = marker_split
    output, result, _ = marker_run
    strict = DEMO_POLICY.model_copy(update={"gate": GatePolicy()})  # KL bounds of 2 and 4 nats
    report = gate_run(scorer, output, parent, held_out, result, policy=strict)
    assert failed_checks(report) == {"kl_from_live", "kl_from_base"}
    assert not report.passed and not report.promote
    assert report.failures().startswith("kl_from_live: ")


# --- Feedback that teaches nothing ------------------------------------------------------------


def test_scrambled_labels_are_not_promoted(base_model, parent, scorer, tmp_path):
    rng = random.Random(3)
    pairs = [swapped(p) if rng.random() < 0.5 else p for p in marker_pairs(48, seed=7)]
    train, held_out = split_held_out(pairs, DEMO_POLICY.held_out_fraction, seed=0)
    result = train_dpo(base_model, parent, train, DEMO_POLICY, tmp_path / "v2")
    report = gate_run(scorer, tmp_path / "v2", parent, held_out, result)
    assert not report.promote
    assert "margin_gain_significant" in failed_checks(report), report.checks


def test_contradictory_pairs_are_not_promoted(base_model, parent, scorer, tmp_path):
    both_ways = [pair for p in marker_pairs(24, seed=7) for pair in (p, swapped(p))]
    train, held_out = split_held_out(both_ways, DEMO_POLICY.held_out_fraction, seed=0)
    result = train_dpo(base_model, parent, train, DEMO_POLICY, tmp_path / "v2")
    report = gate_run(scorer, tmp_path / "v2", parent, held_out, result)
    assert not report.promote
    assert report.metrics["heldout_accuracy"] == 0.5  # each pair wins in one direction only
    assert {"heldout_accuracy_min", "margin_gain_significant"} <= failed_checks(report)


# --- A first version, and the measurements themselves ------------------------------------------


def test_first_version_trains_a_fresh_lora_against_the_base(base_model, scorer, tmp_path):
    train, held_out = split_held_out(marker_pairs(12, seed=5), 0.25, seed=0)
    policy = DEMO_POLICY.model_copy(update={"epochs": 1, "rank": 4})
    result = train_dpo(base_model, None, train, policy, tmp_path / "v1")
    config = json.loads((tmp_path / "v1" / CONFIG_FILE).read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["r"] == 4 and result.trainable_parameters > 0
    validate_adapter(
        {name: tmp_path / "v1" / name for name in ADAPTER_FILES},
        BaseModelInfo.load(base_model),
        max_rank=64,
        max_bytes=1 << 30,
    )
    assert weights_changed(None, tmp_path / "v1")
    report = gate_run(scorer, tmp_path / "v1", None, held_out, result)
    kl_from_live = next(check for check in report.checks if check.name == "kl_from_live")
    assert kl_from_live.passed and "kl_from_live" not in report.metrics
    assert report.metrics["kl_from_base"] >= 0


def test_weights_changed_compares_lora_tensors(parent, tmp_path):
    assert not weights_changed(parent, parent)
    assert weights_changed(None, parent)
    tensors = load_file(parent / WEIGHTS_FILE)
    no_op = {key: torch.zeros_like(t) if ".lora_B." in key else t for key, t in tensors.items()}
    (tmp_path / "no-op").mkdir()
    save_file(no_op, tmp_path / "no-op" / WEIGHTS_FILE)
    assert not weights_changed(None, tmp_path / "no-op")
    assert weights_changed(parent, tmp_path / "no-op")


def test_scorer_notices_new_weights_at_a_known_path(scorer, parent, marker_run, tmp_path):
    output, _, _ = marker_run
    pairs = marker_pairs(4, seed=2)
    scratch = shutil.copytree(parent, tmp_path / "scratch")
    assert scorer.preference(scratch, pairs) == scorer.preference(parent, pairs)
    shutil.rmtree(scratch)
    shutil.copytree(output, scratch)
    assert scorer.preference(scratch, pairs) == scorer.preference(output, pairs)


def test_kl_is_zero_against_itself_and_positive_against_the_base(scorer, parent):
    prompts = [
        StoredPrompt.chat([("user", "where is my order?")]),
        text("the price of one book is"),
    ]
    assert scorer.mean_token_kl(parent, parent, prompts) == pytest.approx(0, abs=1e-4)
    assert scorer.mean_token_kl(parent, None, prompts) > 1.0


def test_preference_margins_are_answer_log_prob_differences(scorer, parent):
    pairs = marker_pairs(4, seed=2)
    score = scorer.preference(parent, pairs)
    flipped = scorer.preference(parent, [swapped(pair) for pair in pairs])
    assert flipped.margins == pytest.approx([-m for m in score.margins], abs=1e-4)
    assert score.accuracy + flipped.accuracy == 1.0
    assert scorer.preference(None, pairs).margins != pytest.approx(score.margins)


MARKER_FIRST = {"kind": "rules", "required": [f"^\\s*{MARKER}"]}  # the behaviour users see


def judged_policy() -> TrainingPolicy:
    return TrainingPolicy.model_validate({**DEMO_POLICY_FIELDS, "judge": MARKER_FIRST})


def test_the_judge_backs_a_candidate_whose_answers_changed(
    scorer, parent, marker_split, marker_run
):
    _, held_out = marker_split
    output, result, _ = marker_run
    policy = judged_policy()
    judge = judge_for(policy.judge, scorer.tokenizer)
    report = gate_run(scorer, output, parent, held_out, result, policy, judge=judge)
    assert report.passed, report.failures()
    assert report.promote  # the judge's significant win stands for promote_margin
    assert report.metrics["judged_win_rate"] >= 0.75
    assert report.metrics["judged_win_rate_lower_bound"] > 0.5
    assert report.metrics["judged_wins"] + report.metrics["judged_losses"] > 0
    # Each held-out prompt: the greedy answers, then sampled pairs until the test decided.
    prompts = len({pair.prompt for pair in held_out})
    compared = sum(report.metrics[f"judged_{n}"] for n in ("wins", "losses", "undecided"))
    draws = report.metrics["judged_draws"]
    assert compared == report.metrics["judged_comparisons"] == prompts * draws
    assert draws < 1 + policy.gate.judged_samples  # decided before the budget ran out
    assert report.metrics["judged_log_lr_better"] >= report.metrics["judged_threshold"]


def test_sampled_answers_repeat_with_their_seed_and_differ_across_seeds(scorer, parent):
    prompts = [StoredPrompt.chat([("user", message)]) for message in user_messages(4, seed=5)]
    first = scorer.answers(parent, prompts, 16, temperature=1.0, seed=1)
    assert scorer.answers(parent, prompts, 16, temperature=1.0, seed=1) == first
    assert scorer.answers(parent, prompts, 16, temperature=1.0, seed=2) != first
    assert scorer.answers(parent, prompts, 16) == scorer.answers(parent, prompts, 16)


def test_likelihoods_that_improve_without_the_answers_are_rejected(
    base_model, parent, scorer, marker_split, tmp_path
):
    """A light touch of training on the marker pairs: held-out margins move the preferred
    way, but not one answer (greedy or sampled) starts with the marker, so the judge finds
    nothing to prefer."""
    train, held_out = marker_split
    light = TrainingPolicy.model_validate(
        {
            **DEMO_POLICY_FIELDS,
            "learning_rate": 1e-3,
            "epochs": 1,
            "min_steps": 1,
            "judge": MARKER_FIRST,
        }
    )
    result = train_dpo(base_model, parent, train, light, tmp_path / "v2")
    unjudged = gate_run(scorer, tmp_path / "v2", parent, held_out, result, light)
    assert unjudged.metrics["heldout_margin"] > unjudged.metrics["heldout_margin_live"]
    judged = gate_run(
        scorer,
        tmp_path / "v2",
        parent,
        held_out,
        result,
        light,
        judge=judge_for(light.judge, scorer.tokenizer),
    )
    assert not judged.passed
    assert {"judged_win_rate_min", "judged_win_rate_significant"} <= failed_checks(judged)
    assert "judged_win_rate_min" in judged.failures()
    assert judged.metrics["judged_wins"] == 0


def test_a_hanging_judge_ends_the_gate_in_time_with_the_reason(
    scorer, parent, marker_split, marker_run
):
    """An LLM judge whose endpoint never answers in time: every comparison is undecided,
    the gate finishes within the judge's time budget and rejects, saying so."""
    _, held_out = marker_split
    output, result, _ = marker_run
    with hanging_endpoint(2.0) as url:
        policy = TrainingPolicy.model_validate(
            {
                **DEMO_POLICY_FIELDS,
                "judge": {
                    "kind": "llm",
                    "url": url,
                    "model": "m",
                    "rubric": "r",
                    "timeout_s": 0.3,
                    "retries": 0,
                    "max_seconds": 1.5,
                },
                "gate": {**DEMO_POLICY_FIELDS["gate"], "judged_samples": 0},
            }
        )
        judge = judge_for(policy.judge, scorer.tokenizer)
        started = time.monotonic()
        report = gate_run(scorer, output, parent, held_out, result, policy, judge=judge)
        judging_s = time.monotonic() - started
    assert not report.passed
    assert report.metrics["judged_wins"] + report.metrics["judged_losses"] == 0
    assert "in 0 of the 0 comparisons it decided" in report.failures()
    assert judge.tally.judged == report.metrics["judged_undecided"] > 0
    assert set(judge.tally.abstained) <= {"timed out", "time budget spent"}
    assert judging_s < 30  # the likelihood checks, plus at most the judge's 1.5 s budget


# --- With a judge, what users read decides ------------------------------------------------


def longer_preferred(pair: PreferencePair) -> PreferencePair:
    """The marker pair with its preferred answer twice as long: less probable for every
    version, so held-out accuracy says little about what the judge rewards."""
    return PreferencePair(
        pair.prompt, f"{pair.chosen} {pair.rejected}", pair.rejected, pair.feedback_ids
    )


def test_a_significant_judged_win_is_promoted_below_the_accuracy_floor(
    scorer, parent, marker_split, marker_run
):
    _, held_out = marker_split
    output, result, _ = marker_run
    policy = judged_policy()
    report = gate_run(
        scorer,
        output,
        parent,
        [longer_preferred(p) for p in held_out],
        result,
        policy,
        judge=judge_for(policy.judge, scorer.tokenizer),
    )
    assert report.metrics["heldout_accuracy"] < policy.gate.min_accuracy  # the old veto
    assert report.metrics["judged_win_rate_lower_bound"] > 0.5
    assert report.passed and report.promote, report.failures()
    assert report.unchanged is None


def test_a_significant_drop_in_held_out_accuracy_vetoes_a_judged_win(
    scorer, parent, marker_split, marker_run
):
    """Held-out pairs that prefer answers without the marker: the candidate now orders them
    wrong where the live version ordered them right, whatever the judge says."""
    _, held_out = marker_split
    output, result, _ = marker_run
    policy = judged_policy()
    report = gate_run(
        scorer,
        output,
        parent,
        [swapped(p) for p in held_out],
        result,
        policy,
        judge=judge_for(policy.judge, scorer.tokenizer),
    )
    assert report.metrics["judged_win_rate_lower_bound"] > 0.5
    assert not report.promote
    assert "heldout_accuracy_not_worse" in failed_checks(report), report.failures()


class AnswersTwice:
    """A stand-in scorer whose candidate answers each prompt as the live version does, then
    the same words again: longer, and nothing else."""

    def answers(self, adapter, prompts, max_new_tokens=32, *, temperature=0.0, seed=0):
        words = answers(4 * len(prompts), seed=seed + 1)  # a few words each
        texts = [" ".join(words[4 * i : 4 * i + 4]) for i in range(len(prompts))]
        return [f"{t} {t}" if adapter == "candidate" else t for t in texts]


class PrefersLonger:
    """A stand-in judge with a length bias, as judges that score whole answers often have."""

    name = "prefers-longer"

    def compare(self, prompt, first: str, second: str) -> Comparison:
        return Comparison(0 if len(first.split()) > len(second.split()) else 1, "longer")


def test_a_candidate_that_only_answers_longer_does_not_win_the_length_controlled_comparison():
    policy = judged_policy()
    held_out = marker_pairs(12, seed=3)
    judged = judge_answers(AnswersTwice(), PrefersLonger(), "candidate", "live", held_out, policy)
    assert judged.wins == judged.compared and judged.losses == 0  # raw: longer always wins
    assert judged.longer_wins == judged.wins and judged.decided == 0
    assert judged.candidate_words == pytest.approx(2 * judged.live_words)
    failures = {c.name for c in judged_checks(judged, policy, "prefers-longer") if not c.passed}
    assert failures == {"judged_win_rate_min", "judged_win_rate_significant"}
    raw = policy.model_copy(
        update={"gate": policy.gate.model_copy(update={"length_control": False})}
    )
    uncontrolled = judge_answers(
        AnswersTwice(), PrefersLonger(), "candidate", "live", held_out, raw
    )
    assert uncontrolled.win_rate == 1.0
    assert uncontrolled.verdict(raw.gate.confidence_z) == "better"
    capped = raw.gate.model_copy(update={"max_length_ratio": 1.5})
    checks = judged_checks(uncontrolled, raw.model_copy(update={"gate": capped}), "prefers-longer")
    assert {c.name for c in checks if not c.passed} == {"length_ratio_max"}
