"""Feedback as DPO preference pairs, and the split into training and held-out pairs.

Pure functions over values: no model, no tokenizer, no database. Every output order is a
function of the input alone, so a run can be repeated from the same feedback.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from loraloop.adapters.prompts import StoredPrompt

# Plain text or chat messages (with tools), exactly as served: hashable, so pairs can be
# grouped and deduplicated by prompt.
Prompt = StoredPrompt


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    feedback_ids: tuple[int, ...] = ()  # the feedback rows this pair came from, sorted


@dataclass(frozen=True)
class ScoredCompletion:
    prompt: Prompt
    completion: str
    score: float  # a judge's or user's score in [0, 1]
    feedback_id: int


# Why an answer is behind no pair (each counted per feedback row):
ALONE = "alone"  # the only answer to its prompt
IDENTICAL = "identical"  # its prompt's answers are all this same text
NO_GAP = "no_gap"  # no other answer of its prompt scored score_gap apart from it
CAPPED = "capped"  # it could have paired, but its prompt had max_pairs_per_prompt already


@dataclass(frozen=True)
class Pairing:
    pairs: list[PreferencePair]
    unpaired: dict[str, int]  # answers (score rows) behind no pair, by the reasons above


@dataclass(frozen=True)
class _Answer:
    """One distinct answer to a prompt: copies that differ only in whitespace are one answer,
    scored by their mean, so a pair never sets an answer against itself."""

    completion: str
    score: float
    feedback_ids: tuple[int, ...]


def same_text(text: str) -> str:
    """The text with its whitespace runs made one space: answers equal under it are one."""
    return " ".join(text.split())


def pairs_from_scores(
    scored: Iterable[ScoredCompletion], min_gap: float, max_per_prompt: int
) -> Pairing:
    """Per prompt, every pair of distinct answers whose scores differ by at least `min_gap`,
    at most `max_per_prompt` of them, so that no prompt outweighs the others: the widest gaps
    first and, among equal gaps, the answers used least so far, so the pairs spread over the
    prompt's answers instead of setting one answer against all the others."""
    by_prompt: dict[Prompt, list[ScoredCompletion]] = {}
    for row in scored:
        by_prompt.setdefault(row.prompt, []).append(row)
    pairs: list[PreferencePair] = []
    unpaired: Counter[str] = Counter()
    for prompt, rows in by_prompt.items():
        answers = _distinct_answers(rows)
        chosen = _widest_pairs(answers, min_gap, max_per_prompt)
        pairs += [
            PreferencePair(
                prompt,
                better.completion,
                worse.completion,
                tuple(sorted(better.feedback_ids + worse.feedback_ids)),
            )
            for better, worse in chosen
        ]
        for answer, reason in _unpaired(answers, chosen, min_gap, len(rows)):
            unpaired[reason] += len(answer.feedback_ids)
    return Pairing(sorted(pairs, key=lambda pair: pair.feedback_ids), dict(unpaired))


def _distinct_answers(rows: Sequence[ScoredCompletion]) -> list[_Answer]:
    groups: dict[str, list[ScoredCompletion]] = {}
    for row in sorted(rows, key=lambda row: row.feedback_id):
        groups.setdefault(same_text(row.completion), []).append(row)
    return [
        _Answer(
            copies[0].completion,
            sum(c.score for c in copies) / len(copies),
            tuple(c.feedback_id for c in copies),
        )
        for copies in groups.values()
    ]


def _widest_pairs(
    answers: Sequence[_Answer], min_gap: float, limit: int
) -> list[tuple[_Answer, _Answer]]:
    candidates = [(a, b) for a in answers for b in answers if a.score - b.score >= min_gap]
    uses: Counter[_Answer] = Counter()  # pairs each answer is in so far
    chosen: list[tuple[_Answer, _Answer]] = []
    while candidates and len(chosen) < limit:
        better, worse = min(
            candidates,
            key=lambda pair: (
                pair[1].score - pair[0].score,
                uses[pair[0]] + uses[pair[1]],
                pair[0].feedback_ids,
                pair[1].feedback_ids,
            ),
        )
        candidates.remove((better, worse))
        chosen.append((better, worse))
        uses.update((better, worse))
    return chosen


def _unpaired(
    answers: Sequence[_Answer], chosen: Sequence[tuple[_Answer, _Answer]], min_gap: float, rows: int
) -> Iterator[tuple[_Answer, str]]:
    in_pairs = {answer for pair in chosen for answer in pair}
    for answer in answers:
        if answer in in_pairs:
            continue
        if len(answers) == 1:
            yield answer, ALONE if rows == 1 else IDENTICAL
        elif all(abs(answer.score - other.score) < min_gap for other in answers):
            yield answer, NO_GAP
        else:
            yield answer, CAPPED


def build_pairs(
    preferences: Iterable[PreferencePair],
    scored: Iterable[ScoredCompletion],
    *,
    min_score_gap: float,
    max_per_prompt: int,
) -> Pairing:
    """Explicit preferences, then pairs from scores; one pair per (prompt, chosen, rejected)
    carrying every feedback id behind it. Pairs that prefer an answer to itself (up to
    whitespace) are dropped."""
    from_scores = pairs_from_scores(scored, min_score_gap, max_per_prompt)
    merged: dict[tuple[Prompt, str, str], set[int]] = {}  # insertion order is the output order
    for pair in [*preferences, *from_scores.pairs]:
        if same_text(pair.chosen) != same_text(pair.rejected):
            merged.setdefault((pair.prompt, pair.chosen, pair.rejected), set()).update(
                pair.feedback_ids
            )
    pairs = [
        PreferencePair(prompt, chosen, rejected, tuple(sorted(ids)))
        for (prompt, chosen, rejected), ids in merged.items()
    ]
    return Pairing(pairs, from_scores.unpaired)


def split_held_out(
    pairs: Sequence[PreferencePair], fraction: float, seed: int, *, min_prompts: int = 1
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held_out). Prompts are ranked by a hash of (seed, prompt) and taken into the
    held-out side until it holds about `fraction` of the pairs and at least `min_prompts`
    prompts (what the gate's tests need to be able to decide), so a prompt's pairs never
    straddle the split and the held-out score measures generalisation to unseen prompts.

    Both sides get at least one pair when there are at least two distinct prompts; with a
    single prompt everything is training data and held_out is empty.
    """
    by_prompt: dict[Prompt, list[PreferencePair]] = {}
    for pair in pairs:
        by_prompt.setdefault(pair.prompt, []).append(pair)
    ranked = sorted(by_prompt, key=lambda prompt: _split_key(seed, prompt))
    target = max(1, round(fraction * len(pairs)))
    held_prompts: set[Prompt] = set()
    held_count = 0
    for prompt in ranked[:-1]:  # the last prompt always stays in training
        if held_count >= target and len(held_prompts) >= min_prompts:
            break
        held_prompts.add(prompt)
        held_count += len(by_prompt[prompt])
    train = [pair for pair in pairs if pair.prompt not in held_prompts]
    held_out = [pair for pair in pairs if pair.prompt in held_prompts]
    return train, held_out


def _split_key(seed: int, prompt: Prompt) -> bytes:
    # The stored JSON keeps a plain prompt ({"text": ...}) apart from a chat one.
    return hashlib.sha256(json.dumps([seed, prompt.to_json()]).encode()).digest()


def replayed(
    earlier: Sequence[PreferencePair],
    train: Sequence[PreferencePair],
    held_out: Sequence[PreferencePair],
    limit: int,
) -> list[PreferencePair]:
    """Up to `limit` of `earlier` rounds' pairs (given newest first) to train on again, so a
    round adds to what was learned instead of starting from its own handful: never one on a
    held-out prompt (the gate measures on prompts training never saw), nor one already in
    this round's training pairs."""
    unseen = {pair.prompt for pair in held_out}
    present = {(pair.prompt, pair.chosen, pair.rejected) for pair in train}
    kept = [
        pair
        for pair in earlier
        if pair.prompt not in unseen and (pair.prompt, pair.chosen, pair.rejected) not in present
    ]
    return kept[:limit]
