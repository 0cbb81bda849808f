"""What an adapter's pending feedback can teach: the pairs it makes, whether a run is due, and
which rows still wait for a partner or will never make a pair.

Pure functions over feedback rows and the policy, with the clock passed in: the poll that
decides whether to start a run and the run that has claimed the rows judge them alike.

Which rows make pairs, and for how long a row may wait for one:

- A preference is a pair by itself (one that prefers an answer to itself never is).
- A score pairs only with other scores of its prompt pending at the same time, best against
  worst when they differ by at least `score_gap`. Every score of a prompt that made a pair
  goes with that pair: the middle ones only ranked the two ends.
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

from loraloop.adapters.policy import TrainingPolicy
from loraloop.adapters.training import ClaimedFeedback

from .pairs import PreferencePair, ScoredCompletion, build_pairs

MIN_PAIRS_EVER = 4  # below this no held-out split means anything


@dataclass(frozen=True)
class Triage:
    pairs: list[PreferencePair]
    used: frozenset[int]  # rows behind the pairs, with every score of a prompt that paired
    waiting: tuple[int, ...]  # scores whose prompt may still pair with a later score
    unpaired: tuple[int, ...]  # rows that will never make a pair
    oldest: datetime | None  # when the oldest used row arrived

    @property
    def rows(self) -> int:
        return len(self.used) + len(self.waiting) + len(self.unpaired)


def pairs_of(feedback: Sequence[ClaimedFeedback], policy: TrainingPolicy) -> list[PreferencePair]:
    preferences = [PreferencePair(f.prompt, f.chosen, f.rejected, (f.id,))
                   for f in feedback if f.kind == "preference"]
    scored = [ScoredCompletion(f.prompt, f.completion, f.score, f.id)
              for f in feedback if f.kind == "score"]
    return build_pairs(preferences, scored, min_score_gap=policy.score_gap)


def triage(feedback: Sequence[ClaimedFeedback], policy: TrainingPolicy,
           now: datetime) -> Triage:
    pairs = pairs_of(feedback, policy)
    in_pairs = {row_id for pair in pairs for row_id in pair.feedback_ids}
    paired_prompts = {f.prompt for f in feedback
                      if f.kind == "score" and f.id in in_pairs}
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
    return Triage(pairs, frozenset(used), tuple(waiting), tuple(unpaired), oldest)


def is_due(found: Triage, policy: TrainingPolicy, now: datetime) -> bool:
    """Enough pairs for the policy, or at least MIN_PAIRS_EVER once the oldest row behind
    them has waited `max_wait_s`."""
    if len(found.pairs) < MIN_PAIRS_EVER:
        return False
    waited = found.oldest is not None and now - found.oldest >= timedelta(
        seconds=policy.max_wait_s)
    return len(found.pairs) >= policy.min_pairs or waited


def might_be_due(pending: int, oldest: datetime | None, policy: TrainingPolicy,
                 now: datetime) -> bool:
    """A bound from row counts alone (rows >= pairs; the oldest row is no younger than the
    oldest used one): False means neither a run is due nor a row's wait has ended, so the
    rows need not be read."""
    waited = oldest is not None and now - oldest >= timedelta(seconds=policy.max_wait_s)
    return waited or pending >= max(policy.min_pairs, MIN_PAIRS_EVER)
