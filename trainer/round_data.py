"""What one run trains and is judged on: its own pairs split into training and held-out
pairs, earlier runs' pairs replayed, and the figures its record keeps about them (how many
answers were judged, the pairs they made and why the rest made none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loraloop.adapters.training import ClaimedFeedback
from loraloop.adapters.training_policy import TrainingPolicy

from .gate import held_out_prompts_needed
from .pairs import PreferencePair, replayed, split_held_out
from .pending import Triage, pairs_of

# Consumed rows read for the replay, per pair it may hold: a prompt's scores make at most a
# pair per row beyond the first, so this leaves room for the rows that pair with nothing.
ROWS_PER_REPLAYED_PAIR = 4


@dataclass(frozen=True)
class RoundData:
    train: list[PreferencePair]  # this run's training pairs, then the replayed ones
    held_out: list[PreferencePair]
    metrics: dict[str, float]  # for the run's record and its version's


def round_data(
    found: Triage,
    claimed: Sequence[ClaimedFeedback],
    consumed: Sequence[ClaimedFeedback],
    policy: TrainingPolicy,
) -> RoundData:
    """`found`: the triage of the `claimed` rows; `consumed`: earlier runs' rows, newest
    first. The held-out side holds about held_out_fraction of the pairs, and never fewer
    prompts than the gate's tests need to decide, unless that would leave training fewer
    prompts than the gate (the record then shows the shortfall)."""
    needed = held_out_prompts_needed(policy)
    prompts = len({pair.prompt for pair in found.pairs})
    own, held_out = split_held_out(
        found.pairs, policy.held_out_fraction, policy.seed, min_prompts=min(needed, prompts // 2)
    )
    earlier = sorted(
        pairs_of(consumed, policy).pairs,
        key=lambda pair: max(pair.feedback_ids, default=0),
        reverse=True,
    )
    replay = replayed(earlier, own, held_out, policy.replay_pairs)
    metrics = {
        "answers_judged": float(sum(row.kind == "score" for row in claimed)),
        "preferences": float(sum(row.kind == "preference" for row in claimed)),
        "pairs_made": float(len(found.pairs)),
        "pairs_replayed": float(len(replay)),
        "train_pairs": float(len(own) + len(replay)),
        "heldout_prompts": float(len({pair.prompt for pair in held_out})),
        "heldout_prompts_needed": float(needed),
        "feedback_set_aside": float(len(found.unpaired)),
        "feedback_waiting": float(len(found.waiting)),
        **{f"unpaired_{reason}": float(count) for reason, count in found.not_paired.items()},
    }
    return RoundData([*own, *replay], held_out, metrics)


def replay_rows(policy: TrainingPolicy) -> int:
    """How many consumed rows to read for the policy's replay."""
    return policy.replay_pairs * ROWS_PER_REPLAYED_PAIR
