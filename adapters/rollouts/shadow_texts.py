"""Users' text in shadow comparisons: the prompt a user sent and both versions' answers.

The rollout's judge reads them after the server stored them, so every comparison keeps its
texts until it is judged. From then on they are kept only where the adapter's policy keeps
users' text (`record_completions`), as recorded completions are; otherwise only the verdict
stays. Past the retention period no comparison keeps its texts, whatever the policy. A
comparison without texts still counts as evidence: its verdict is what the analysis reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import null, or_, select, update
from sqlalchemy.engine import Connection

from ..db import Database
from ..pointers import UNFINISHED_ROLLOUT
from ..schema import Adapter, Rollout, ShadowComparison
from ..training_policy import TrainingPolicy

# The judge's rationale goes with the texts: it may quote them.
NO_TEXTS = {
    "prompt": null(),
    "candidate_answer": null(),
    "baseline_answer": null(),
    "rationale": null(),
}
HAS_TEXTS = ShadowComparison.prompt.is_not(None)


def keeps_users_text(policy: dict | None) -> bool:
    return TrainingPolicy.stored(policy).record_completions


def pairs_keeping_texts(pair_ids: Iterable[int], *, connection: Connection) -> set[int]:
    """Those of `pair_ids` whose adapter's policy keeps users' text."""
    rows = connection.execute(
        select(ShadowComparison.id, Adapter.id, Adapter.policy)
        .join(Rollout, ShadowComparison.rollout_id == Rollout.id)
        .join(Adapter, Rollout.adapter_id == Adapter.id)
        .where(ShadowComparison.id.in_(list(pair_ids)))
    )
    keeps: dict[int, bool] = {}  # by adapter row: one policy read per adapter
    found = set()
    for pair_id, adapter_id, policy in rows:
        if adapter_id not in keeps:
            keeps[adapter_id] = keeps_users_text(policy)
        if keeps[adapter_id]:
            found.add(pair_id)
    return found


def forget_texts(db: Database, *, older_than: datetime) -> int:
    """Drop the texts of every comparison stored before `older_than`, and of every one no
    judge will read any more (judged, of a step its rollout has left, or of a rollout that
    ended) where the adapter's policy does not keep users' text. Returns how many."""
    with db.writing_rows() as connection:
        forgotten = connection.execute(
            update(ShadowComparison)
            .where(ShadowComparison.created_at < older_than, HAS_TEXTS)
            .values(**NO_TEXTS)
        ).rowcount
        holding = select(ShadowComparison.rollout_id).where(HAS_TEXTS).distinct()
        rollouts = connection.execute(
            select(Rollout.id, Rollout.step, Rollout.status, Adapter.policy)
            .join(Adapter, Rollout.adapter_id == Adapter.id)
            .where(Rollout.id.in_(holding))
        ).all()
        for rollout_id, step, status, policy in rollouts:
            if keeps_users_text(policy):
                continue
            unread = ShadowComparison.rollout_id == rollout_id
            if status in UNFINISHED_ROLLOUT:
                unread &= or_(ShadowComparison.step < step, ShadowComparison.verdict.is_not(None))
            forgotten += connection.execute(
                update(ShadowComparison).where(unread, HAS_TEXTS).values(**NO_TEXTS)
            ).rowcount
    return forgotten
