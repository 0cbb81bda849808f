"""A round's data and its gate: judged answers into pairs (every two a gap apart, capped per
prompt, never an answer against itself), training long enough, earlier rounds replayed within
a bound, and judged comparisons drawn until the sequential test decides.

Pure functions on hand-written values; the gate's comparisons with a stand-in scorer whose
two versions answer from fixed rules and a stand-in judge that prefers one word. One short
real DPO run shows the step floor reaching the trainer.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training import ClaimedFeedback
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.dpo import train_dpo
from loraloop.trainer.gate import held_out_prompts_needed, judge_answers, judged_checks
from loraloop.trainer.judges import Comparison
from loraloop.trainer.pairs import (
    PreferencePair,
    ScoredCompletion,
    build_pairs,
    pairs_from_scores,
    replayed,
    split_held_out,
)
from loraloop.trainer.pending import triage
from loraloop.trainer.round_data import round_data
from loraloop.trainer.steps import optimizer_steps

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
JUDGED = TrainingPolicy.model_validate({"judge": {"kind": "rules", "required": ["^yes"]}})


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


def scored(prompt: str, *answers: tuple[str, float], first_id: int = 1) -> list[ScoredCompletion]:
    return [
        ScoredCompletion(chat(prompt), text, score, first_id + n)
        for n, (text, score) in enumerate(answers)
    ]


# --- Pairs from everything judged -------------------------------------------------------------


def test_every_two_answers_a_gap_apart_pair_and_closer_ones_do_not():
    rows = scored("p", ("best", 1.0), ("good", 0.8), ("fair", 0.5), ("bad", 0.0))
    pairing = pairs_from_scores(rows, min_gap=0.3, max_per_prompt=8)
    made = {(pair.chosen, pair.rejected) for pair in pairing.pairs}
    assert made == {
        ("best", "fair"),
        ("best", "bad"),
        ("good", "fair"),
        ("good", "bad"),
        ("fair", "bad"),
    }  # best against good: 0.2 apart, under the gap
    assert pairing.unpaired == {}


def test_a_prompt_makes_at_most_its_cap_spread_over_its_answers():
    """2 of 8 answers pass: 12 pairs a gap apart, capped at 8, each passing answer in 4 and
    every failing one in at least one; under a cap of 3 the answers left over say so."""
    rows = scored("p", ("yes a", 1.0), ("yes b", 1.0), *((f"no {n}", 0.0) for n in range(6)))
    capped = pairs_from_scores(rows, min_gap=0.3, max_per_prompt=8)
    assert len(capped.pairs) == 8 and capped.unpaired == {}
    uses = Counter(answer for pair in capped.pairs for answer in (pair.chosen, pair.rejected))
    assert uses["yes a"] == uses["yes b"] == 4
    assert all(uses[f"no {n}"] >= 1 for n in range(6))
    tight = pairs_from_scores(rows, min_gap=0.3, max_per_prompt=3)
    assert len(tight.pairs) == 3
    assert tight.unpaired == {
        "capped": 8 - len({a for p in tight.pairs for a in (p.chosen, p.rejected)})
    }


def test_no_prompt_outweighs_the_others():
    many = scored(
        "many", *((f"yes {n}", 1.0) for n in range(8)), *((f"no {n}", 0.0) for n in range(8))
    )
    few = scored("few", ("yes", 1.0), ("no", 0.0), first_id=100)
    pairs = pairs_from_scores([*many, *few], min_gap=0.3, max_per_prompt=4).pairs
    assert Counter(pair.prompt for pair in pairs) == {chat("many"): 4, chat("few"): 1}


def test_answers_equal_up_to_whitespace_are_one_answer_and_never_a_pair():
    # A noisy judge scored the same answer twice, far apart: still no pair.
    same = scored("same", ("yes sir", 1.0), ("yes  sir\n", 0.0))
    pairing = pairs_from_scores(same, min_gap=0.3, max_per_prompt=8)
    assert pairing.pairs == [] and pairing.unpaired == {"identical": 2}
    # Copies stand together behind one pair, scored by their mean.
    copies = scored("copies", ("yes", 1.0), (" yes", 1.0), ("no", 0.0), first_id=10)
    assert pairs_from_scores(copies, 0.3, 8).pairs == [
        PreferencePair(chat("copies"), "yes", "no", (10, 11, 12))
    ]
    lone = scored("lone", ("only", 1.0), first_id=20)
    close = scored("close", ("a", 0.6), ("b", 0.5), first_id=30)
    assert pairs_from_scores([*lone, *close], 0.3, 8).unpaired == {"alone": 1, "no_gap": 2}


def test_a_preference_of_an_answer_over_itself_up_to_whitespace_is_dropped():
    preferences = [
        PreferencePair(chat("p"), "same answer", "same  answer ", (1,)),
        PreferencePair(chat("p"), "yes", "no", (2,)),
    ]
    assert build_pairs(preferences, [], min_score_gap=0.3, max_per_prompt=8).pairs == [
        PreferencePair(chat("p"), "yes", "no", (2,))
    ]


# --- Enough training, earlier rounds replayed -------------------------------------------------


def test_few_pairs_train_whole_epochs_up_to_min_steps():
    policy = TrainingPolicy(epochs=3, batch_size=8, min_steps=32)
    assert optimizer_steps(12, policy) == 32  # 2 batches an epoch: 16 epochs, not 3
    assert optimizer_steps(10, TrainingPolicy(epochs=3, batch_size=4, min_steps=32)) == 33
    assert optimizer_steps(200, policy) == 75  # 25 batches an epoch: the epochs suffice


def test_the_step_floor_reaches_the_trainer(demo_model, tmp_path):
    pairs = [PreferencePair(chat(f"q{n}?"), "yes.", "no.") for n in range(4)]
    policy = TrainingPolicy(epochs=1, batch_size=8, min_steps=5)
    progress: list[dict] = []
    result = train_dpo(
        demo_model, None, pairs, policy, tmp_path / "v1", on_progress=progress.append
    )
    assert result.steps == len(progress) == 5


def test_replay_is_bounded_and_never_on_a_held_out_prompt_or_twice():
    earlier = [PreferencePair(chat(f"old {n}"), "yes", "no", (100 - n,)) for n in range(10)]
    held_out = [PreferencePair(chat("old 0"), "yes", "no")]
    train = [PreferencePair(chat("old 1"), "yes", "no")]
    again = replayed(earlier, train, held_out, limit=3)
    assert [pair.prompt for pair in again] == [chat("old 2"), chat("old 3"), chat("old 4")]
    assert replayed(earlier, train, held_out, limit=0) == []


def feedback(row_id: int, prompt: str, completion: str, score: float) -> ClaimedFeedback:
    return ClaimedFeedback(row_id, "score", chat(prompt), None, None, completion, score, NOW)


def test_a_round_records_its_answers_pairs_reasons_and_replay():
    claimed = [
        feedback(n + 1, f"p{n // 4}", "yes" if n % 4 == 0 else f"no {n}", float(n % 4 == 0))
        for n in range(40)
    ]  # 10 prompts of 4 answers, one passing: 3 pairs each
    claimed += [
        feedback(50, "lone", "yes", 1.0),
        feedback(51, "tied", "no", 0.0),
        feedback(52, "tied", "no ", 0.0),
    ]
    consumed = [
        feedback(200 + n, f"old{n // 2}", "yes" if n % 2 else "no", float(n % 2)) for n in range(40)
    ]
    policy = JUDGED.model_copy(update={"replay_pairs": 5})
    found = triage(claimed, policy, NOW)
    data = round_data(found, claimed, consumed[::-1], policy)
    metrics = data.metrics
    assert metrics["answers_judged"] == 43 and metrics["pairs_made"] == len(found.pairs) == 30
    assert metrics["unpaired_identical"] == 2 and metrics["unpaired_alone"] == 1
    assert metrics["pairs_replayed"] == 5
    assert metrics["train_pairs"] == len(data.train) == len(found.pairs) - len(data.held_out) + 5
    assert metrics["heldout_prompts"] >= held_out_prompts_needed(policy)
    replay = data.train[-5:]
    assert [pair.prompt for pair in replay] == [chat(f"old{n}") for n in (19, 18, 17, 16, 15)]
    assert {p.prompt for p in data.train}.isdisjoint({p.prompt for p in data.held_out})


def test_a_small_round_keeps_half_its_prompts_for_training_and_records_the_shortfall():
    claimed = [
        feedback(2 * n + side + 1, f"p{n}", "yes" if side else "no", float(side))
        for n in range(4)
        for side in (0, 1)
    ]
    data = round_data(triage(claimed, JUDGED, NOW), claimed, [], JUDGED)
    assert (data.metrics["heldout_prompts"], data.metrics["heldout_prompts_needed"]) == (2, 5)
    assert len(data.train) == 2 and data.metrics["pairs_replayed"] == 0


def test_held_out_prompts_are_never_fewer_than_the_gate_needs():
    pairs = [PreferencePair(chat(f"q{n}"), "yes", "no", (n,)) for n in range(40)]
    _, held_out = split_held_out(pairs, 0.05, seed=0)
    assert len(held_out) == 2
    _, held_out = split_held_out(pairs, 0.05, seed=0, min_prompts=5)
    assert len(held_out) == 5
    # z 2.33: 42 comparisons decide a 3-in-4 win rate; 9 per prompt (greedy + 8 sampled).
    assert held_out_prompts_needed(JUDGED) == 5
    assert (
        held_out_prompts_needed(
            JUDGED.model_copy(update={"gate": JUDGED.gate.model_copy(update={"judged_samples": 0})})
        )
        == 42
    )
    assert held_out_prompts_needed(TrainingPolicy()) == 2  # the margin's standard error


# --- A gate that can decide -------------------------------------------------------------------


class TwoVersions:
    """A stand-in scorer: each version answers every prompt by its own rule, from the draw's
    seed (greedy: seed -1), so sampled draws differ and repeat."""

    def __init__(self, candidate, live) -> None:
        self.rules = {"candidate": candidate, "live": live}

    def answers(self, adapter, prompts, max_new_tokens=32, *, temperature=0.0, seed=0):
        draw = seed if temperature > 0 else -1
        return [self.rules[adapter](index, draw) for index in range(len(prompts))]


class PrefersYes:
    name = "prefers-yes"

    def compare(self, prompt, first: str, second: str) -> Comparison:
        ours, theirs = first.startswith("yes"), second.startswith("yes")
        if ours == theirs:
            return Comparison(None, "no preference")
        return Comparison(0 if ours else 1, "says yes")


def yes(index: int, draw: int) -> str:
    return f"yes {index} {draw}"


def no(index: int, draw: int) -> str:
    return f"no {index} {draw}"


HELD_OUT = [PreferencePair(chat(f"q{n}"), "yes", "no") for n in range(4)]


def significance(judged) -> object:
    return next(
        c
        for c in judged_checks(judged, JUDGED, "prefers-yes")
        if c.name == "judged_win_rate_significant"
    )


def test_comparisons_stop_as_soon_as_the_test_decides_better():
    judged = judge_answers(
        TwoVersions(yes, no), PrefersYes(), "candidate", "live", HELD_OUT, JUDGED
    )
    # 4 then 8 straight wins are short of log(1/0.01); 12 are past it.
    assert (judged.draws, judged.compared, judged.wins) == (3, 12, 12)
    assert judged.verdict(JUDGED.gate.confidence_z) == "better"
    assert significance(judged).passed
    assert judged.metrics(2.33)["judged_comparisons"] == 12


def test_a_worse_candidate_is_decided_worse():
    judged = judge_answers(
        TwoVersions(no, yes), PrefersYes(), "candidate", "live", HELD_OUT, JUDGED
    )
    assert judged.verdict(JUDGED.gate.confidence_z) == "worse" and judged.draws == 3
    check = significance(judged)
    assert not check.passed and "significantly worse after 12 comparisons" in check.detail


def test_undecided_at_the_budget_names_what_was_lacking():
    judged = judge_answers(TwoVersions(no, no), PrefersYes(), "candidate", "live", HELD_OUT, JUDGED)
    assert judged.draws == 1 + JUDGED.gate.judged_samples and judged.compared == 36
    check = significance(judged)
    assert not check.passed
    assert check.detail.startswith(
        "undecided after 36 comparisons: 36 identical answers, 0 abstentions, 0 wins and 0 losses"
    )


def test_wins_and_losses_that_balance_stay_undecided():
    def candidate(index: int, draw: int) -> str:  # wins on q0, loses on q1
        return {0: yes, 1: no}.get(index, no)(index, draw)

    def live(index: int, draw: int) -> str:
        return {0: no, 1: yes}.get(index, no)(index, draw)

    judged = judge_answers(
        TwoVersions(candidate, live), PrefersYes(), "candidate", "live", HELD_OUT, JUDGED
    )
    assert judged.explain(2.33) == (
        "undecided after 36 comparisons: 18 identical answers, 0 abstentions, 9 wins and 9 losses"
    )


@pytest.mark.parametrize("z", [0.0, 1.64, 2.33])
def test_the_budget_allows_a_clear_win_to_be_decided(z):
    """As many held-out prompts as held_out_prompts_needed, a candidate winning 3 in 4:
    the comparisons within budget decide it better."""
    policy = JUDGED.model_copy(update={"gate": JUDGED.gate.model_copy(update={"confidence_z": z})})
    prompts = [
        PreferencePair(chat(f"q{n}"), "yes", "no") for n in range(held_out_prompts_needed(policy))
    ]

    def three_in_four(index: int, draw: int) -> str:
        return no(index, draw) if (index + draw) % 4 == 0 else yes(index, draw)

    judged = judge_answers(
        TwoVersions(three_in_four, no), PrefersYes(), "candidate", "live", prompts, policy
    )
    assert judged.verdict(z) == "better"
