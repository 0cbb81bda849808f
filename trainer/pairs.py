"""Feedback as DPO preference pairs, and the split into training and held-out pairs.

Pure functions over values: no model, no tokenizer, no database. Every output order is a
function of the input alone, so a run can be repeated from the same feedback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
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


def pairs_from_scores(scored: Iterable[ScoredCompletion], min_gap: float) -> list[PreferencePair]:
    """Per prompt, the best against the worst completion, when their scores differ by at
    least `min_gap`. Equal scores are ranked by feedback id, the earliest first."""
    by_prompt: dict[Prompt, list[ScoredCompletion]] = {}
    for row in scored:
        by_prompt.setdefault(row.prompt, []).append(row)
    pairs = []
    for rows in by_prompt.values():
        ranked = sorted(rows, key=lambda row: (-row.score, row.feedback_id))
        best, worst = ranked[0], ranked[-1]
        if len(ranked) >= 2 and best.score - worst.score >= min_gap:
            ids = tuple(sorted((best.feedback_id, worst.feedback_id)))
            pairs.append(PreferencePair(best.prompt, best.completion, worst.completion, ids))
    return sorted(pairs, key=lambda pair: pair.feedback_ids)


def build_pairs(
    preferences: Iterable[PreferencePair],
    scored: Iterable[ScoredCompletion],
    *,
    min_score_gap: float,
) -> list[PreferencePair]:
    """Explicit preferences, then pairs from scores; one pair per (prompt, chosen, rejected)
    carrying every feedback id behind it. Pairs that prefer an answer to itself are dropped."""
    merged: dict[tuple[Prompt, str, str], set[int]] = {}  # insertion order is the output order
    for pair in [*preferences, *pairs_from_scores(scored, min_score_gap)]:
        if pair.chosen != pair.rejected:
            merged.setdefault((pair.prompt, pair.chosen, pair.rejected), set()).update(
                pair.feedback_ids
            )
    return [
        PreferencePair(prompt, chosen, rejected, tuple(sorted(ids)))
        for (prompt, chosen, rejected), ids in merged.items()
    ]


def split_held_out(
    pairs: Sequence[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held_out). Prompts are ranked by a hash of (seed, prompt) and taken into the
    held-out side until it holds about `fraction` of the pairs, so a prompt's pairs never
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
        if held_count >= target:
            break
        held_prompts.add(prompt)
        held_count += len(by_prompt[prompt])
    train = [pair for pair in pairs if pair.prompt not in held_prompts]
    held_out = [pair for pair in pairs if pair.prompt in held_prompts]
    return train, held_out


def _split_key(seed: int, prompt: Prompt) -> bytes:
    # The stored JSON keeps a plain prompt ({"text": ...}) apart from a chat one.
    return hashlib.sha256(json.dumps([seed, prompt.to_json()]).encode()).digest()
