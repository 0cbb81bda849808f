"""What an adapter's pending feedback can teach: the pairs it makes, whether a run is due, and
which rows still wait for a partner or will never make a pair.

Pure functions over feedback rows and the policy, with the clock passed in: the poll that
decides whether to start a run and the run that has claimed the rows judge them alike.

Which rows make pairs, and for how long a row may wait for one:

- A preference is a pair by itself (one that prefers an answer to itself never is).
- A score pairs only with other scores of its prompt pending at the same time: each two
  answers `score_gap` apart make a pair, up to `max_pairs_per_prompt` (pairs.py). Every score
  of a prompt that made a pair goes with its pairs, the unpaired ones too: they ranked the
  others, and are counted by why they made none.
- A score whose prompt has no pair yet may still get one when another score of that prompt
  arrives, so it waits, pending, but counts toward no run. It waits `max_wait_s` from its own
  arrival, the time the policy already lets feedback gather before a run; after that it is
  `unpaired` for good, so tied or lone judge scores neither trigger runs nor stay in the
  queue forever. (A later score of that prompt starts its own wait; it never pairs with a
  row that is unpaired or consumed.)

Only rows that make pairs count toward a run being due, so no run starts that cannot train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loraloop.adapters.training import ClaimedFeedback
from loraloop.adapters.training_policy import TrainingPolicy

from .pairs import Pairing, PreferencePair, ScoredCompletion, build_pairs

MIN_PAIRS_EVER = 4  # below this no held-out split means anything


@dataclass(frozen=True)
class Triage:
    pairs: list[PreferencePair]
    used: frozenset[int]  # rows behind the pairs, with every score of a prompt that paired
    waiting: tuple[int, ...]  # scores whose prompt may still pair with a later score
    unpaired: tuple[int, ...]  # rows that will never make a pair
    oldest: datetime | None  # when the oldest used row arrived
    not_paired: dict[str, int]  # score rows behind no pair, by why (pairs.ALONE, ...)

    @property
    def rows(self) -> int:
        return len(self.used) + len(self.waiting) + len(self.unpaired)


def pairs_of(feedback: Sequence[ClaimedFeedback], policy: TrainingPolicy) -> Pairing:
    # Each kind's fields are present, as the feedback API checked them; the tests narrow them.
    preferences = [
        PreferencePair(f.prompt, f.chosen, f.rejected, (f.id,))
        for f in feedback
        if f.kind == "preference"
        if f.chosen is not None and f.rejected is not None
    ]
    scored = [
        ScoredCompletion(f.prompt, f.completion, f.score, f.id)
        for f in feedback
        if f.kind == "score"
        if f.completion is not None and f.score is not None
    ]
    return build_pairs(
        preferences,
        scored,
        min_score_gap=policy.score_gap,
        max_per_prompt=policy.max_pairs_per_prompt,
    )


def triage(feedback: Sequence[ClaimedFeedback], policy: TrainingPolicy, now: datetime) -> Triage:
    pairing = pairs_of(feedback, policy)
    pairs = pairing.pairs
    in_pairs = {row_id for pair in pairs for row_id in pair.feedback_ids}
    paired_prompts = {f.prompt for f in feedback if f.kind == "score" and f.id in in_pairs}
    window = timedelta(seconds=policy.max_wait_s)
    used, waiting, unpaired = set(), [], []
    for row in feedback:
        if row.id in in_pairs or (row.kind == "score" and row.prompt in paired_prompts):
            used.add(row.id)
        elif row.kind == "score" and now - row.created_at < window:
            waiting.append(row.id)
        else:
            unpaired.append(row.id)
    oldest = min((row.created_at for row in feedback if row.id in used), default=None)
    return Triage(pairs, frozenset(used), tuple(waiting), tuple(unpaired), oldest, pairing.unpaired)


def is_due(found: Triage, policy: TrainingPolicy, now: datetime) -> bool:
    """Enough pairs for the policy, or at least MIN_PAIRS_EVER once the oldest row behind
    them has waited `max_wait_s`."""
    if len(found.pairs) < MIN_PAIRS_EVER:
        return False
    waited = found.oldest is not None and now - found.oldest >= timedelta(seconds=policy.max_wait_s)
    return len(found.pairs) >= policy.min_pairs or waited


def too_few_pairs(found: Triage) -> str:
    """Why these rows cannot make a run: the reason a run is refused or fails with."""
    return (
        f"{len(found.pairs)} preference pairs from {found.rows} feedback rows; at least "
        f"{MIN_PAIRS_EVER} are needed"
    )


def might_be_due(
    pending: int, oldest: datetime | None, policy: TrainingPolicy, now: datetime
) -> bool:
    """A bound from row counts alone (rows >= pairs; the oldest row is no younger than the
    oldest used one): False means neither a run is due nor a row's wait has ended, so the
    rows need not be read."""
    waited = oldest is not None and now - oldest >= timedelta(seconds=policy.max_wait_s)
    return waited or pending >= max(policy.min_pairs, MIN_PAIRS_EVER)
