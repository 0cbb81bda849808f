"""Feedback that makes no training pair, and training that reproduces an existing version.

Tied or lone judge scores must neither start runs nor stay queued forever; a candidate whose
weights are an existing version's must leave that version exactly as it was. Bookkeeping on
real SQLite and PostgreSQL; the trainer with real training on the generated demo model.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database, sqlite_url
from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import registry_on
from loraloop.adapters.store import WeightStore
from loraloop.adapters.tenants import TenantBook
from loraloop.adapters.training import ClaimedFeedback
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import NewVersion, RegistrationPolicy
from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, preference_feedback, user_messages
from loraloop.trainer.loop import TrainerLoop
from loraloop.trainer.pending import is_due, triage

ADAPTER = "acme/support"
# A gate any candidate that learned the marker at all passes: the identical-version scenario
# needs its first run promoted.
LENIENT_GATE = {
    "min_accuracy": 0,
    "promote_margin": 0,
    "confidence_z": 0,
    "max_kl_from_live": 1000,
    "max_kl_from_base": 1000,
}


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


def score(prompt: str, completion: str, value: float) -> NewFeedback:
    return NewFeedback(
        ADAPTER, 1, "score", chat(prompt), completion=completion, score=value, judge="rubric"
    )


def preferences(messages: list[str]) -> list[NewFeedback]:
    return [
        NewFeedback(
            ADAPTER,
            1,
            "preference",
            chat(line["messages"][0]["content"]),
            chosen=line["chosen"],
            rejected=line["rejected"],
        )
        for line in preference_feedback(ADAPTER, messages)
    ]


class Loop:
    """A registry with ADAPTER at version 1 (live), its feedback, and a trainer on them."""

    def __init__(self, url: str, tmp_path, demo_model, v1, policy: dict) -> None:
        self.db = Database(url)
        self.db.upgrade()
        TenantBook(self.db).create("acme", actor="t")
        rules = RegistrationPolicy(BaseModelInfo.load(demo_model), max_rank=64, max_bytes=1 << 30)
        store = WeightStore(tmp_path / "weights")
        registry = registry_on(self.db, store, rules)
        self.adapters, self.training, self.feedback = (
            registry.adapters,
            registry.training,
            registry.feedback,
        )
        self.rollouts = registry.rollouts
        self.adapters.create(ADAPTER, actor="t")
        self.adapters.register(
            ADAPTER, {name: v1 / name for name in ADAPTER_FILES}, NewVersion(), actor="t"
        )
        self.adapters.promote(ADAPTER, 1, actor="t")
        self.adapters.set_policy(ADAPTER, TrainingPolicy.model_validate(policy), actor="t")
        self.trainer = TrainerLoop(registry, demo_model, worker="w", lease_s=60)

    def submit(self, items: list[NewFeedback]) -> list[int]:
        return [self.feedback.submit(item)[0].id for item in items]

    def by_status(self) -> dict[str, int]:
        return self.feedback.stats(ADAPTER).by_status


@pytest.fixture
def books(database, tmp_path, demo_model, adapter_dirs):
    loop = Loop(database, tmp_path, demo_model, adapter_dirs["acme/support"], DEMO_POLICY)
    yield loop
    loop.db.dispose()


@pytest.fixture
def open_loop(tmp_path, demo_model, adapter_dirs):
    """A trainer on SQLite (its runs train for real), with the adapter's policy given."""
    opened: list[Loop] = []

    def start(**policy) -> Loop:
        opened.append(
            Loop(
                sqlite_url(tmp_path),
                tmp_path,
                demo_model,
                adapter_dirs["acme/support"],
                {**DEMO_POLICY, **policy},
            )
        )
        return opened[0]

    yield start
    for loop in opened:
        loop.db.dispose()


# --- Which rows make pairs --------------------------------------------------------------------


NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def row(
    row_id: int,
    prompt: str,
    *,
    age_s: float,
    completion: str | None = None,
    value: float | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
) -> ClaimedFeedback:
    kind = "score" if value is not None else "preference"
    return ClaimedFeedback(
        row_id,
        kind,
        chat(prompt),
        chosen,
        rejected,
        completion,
        value,
        NOW - timedelta(seconds=age_s),
    )


def test_only_rows_that_make_pairs_count_and_lone_scores_wait_their_window():
    policy = TrainingPolicy(min_pairs=2, max_wait_s=60, score_gap=0.3)
    rows = [
        row(1, "p", age_s=5, chosen="yes", rejected="no"),
        row(2, "p", age_s=5, chosen="same", rejected="same"),  # prefers an answer to itself
        row(3, "q", age_s=90, completion="great", value=0.9),
        row(4, "q", age_s=5, completion="fine", value=0.7),  # a gap from "bad" alone
        row(5, "q", age_s=5, completion="bad", value=0.1),
        row(6, "r", age_s=5, completion="a", value=0.5),  # tied: may pair with a later score
        row(7, "r", age_s=90, completion="b", value=0.5),  # tied, and its window is over
        row(8, "s", age_s=90, completion="alone", value=1.0),
        row(9, "t", age_s=5, completion="same", value=0.9),  # one text, two scores: no pair
        row(10, "t", age_s=5, completion="same", value=0.1),
    ]
    found = triage(rows, policy, NOW)
    chat_q = chat("q")
    assert [(pair.prompt, pair.chosen, pair.rejected) for pair in found.pairs] == [
        (chat("p"), "yes", "no"),
        (chat_q, "great", "bad"),
        (chat_q, "fine", "bad"),
    ]
    assert found.used == {1, 3, 4, 5}
    assert (found.waiting, found.unpaired) == ((6, 9, 10), (2, 7, 8))
    assert found.oldest == NOW - timedelta(seconds=90) and found.rows == 10
    assert found.not_paired == {"no_gap": 2, "alone": 1, "identical": 2}
    assert is_due(found, policy.model_copy(update={"max_wait_s": 0}), NOW) is False  # 3 < 4
    eight_ties = [row(i, f"p{i // 2}", age_s=0, completion=str(i), value=0.5) for i in range(8)]
    tied = triage(eight_ties, policy.model_copy(update={"max_wait_s": 0}), NOW)
    assert (tied.pairs, tied.waiting, len(tied.unpaired)) == ([], (), 8)


# --- The book: unpaired rows, set aside by the poll or by a run ---------------------------------


def test_unpaired_rows_leave_the_queue_for_good(books):
    first, second, third = books.submit(
        [score("p", "a", 0.5), score("p", "b", 0.5), score("q", "c", 0.5)]
    )
    claimable = books.training.claimable(ADAPTER)
    assert [f.id for f in claimable] == [first, second, third]
    assert all(f.created_at.tzinfo is not None for f in claimable)
    assert books.training.mark_unpaired(ADAPTER, [first, second]) == 2
    assert books.by_status() == {"unpaired": 2, "pending": 1}
    assert [w.pending for w in books.training.pending_work()] == [1]
    claim = books.training.claim(ADAPTER, worker="a", lease_s=60)
    assert [f.id for f in claim.feedback] == [third]
    assert books.training.mark_unpaired(ADAPTER, [third]) == 0  # the run holds it
    assert books.by_status() == {"unpaired": 2, "claimed": 1}


def test_a_run_sets_aside_what_it_cannot_train_on(books):
    ids = books.submit(
        [score("p", "a", 0.9), score("p", "b", 0.1), score("q", "c", 0.5), score("r", "d", 0.5)]
    )
    claim = books.training.claim(ADAPTER, worker="a", lease_s=60)
    with pytest.raises(LeaseLost):
        books.training.set_aside(claim.run_id, worker="b", unpaired=[ids[2]], waiting=[])
    books.training.set_aside(claim.run_id, worker="a", unpaired=[ids[2]], waiting=[ids[3]])
    assert books.by_status() == {"claimed": 2, "unpaired": 1, "pending": 1}
    with books.db.transaction(routing_change=False) as session:
        books.training.consume(claim.run_id, 2, worker="a", pairs=1, session=session)
    assert books.by_status() == {"consumed": 2, "unpaired": 1, "pending": 1}
    assert [f.id for f in books.training.claimable(ADAPTER)] == [ids[3]]


def test_a_queued_run_can_be_refused_without_claiming(books):
    books.submit([score("p", "a", 0.5)])
    queued = books.training.queue(ADAPTER, actor="admin")
    refused = books.training.refuse_queued(ADAPTER, reason="not started: no pairs")
    assert (refused.id, refused.status, refused.reason) == (
        queued.id,
        "failed",
        "not started: no pairs",
    )
    assert refused.started_at is None and refused.finished_at is not None
    assert books.by_status() == {"pending": 1}
    assert not any(w.queued for w in books.training.pending_work())
    assert books.training.refuse_queued(ADAPTER, reason="again") is None


# --- The trainer: no run that cannot train, and no loop --------------------------------------


def tied_scores(loop: Loop) -> None:
    """Four prompts, two completions each, all scored 0.5: not one pair."""
    loop.submit(
        [score(f"question {i}?", f"answer {i}{side}", 0.5) for i in range(4) for side in "ab"]
    )


def test_tied_scores_start_no_run_and_become_unpaired_when_their_wait_is_over(open_loop):
    loop = open_loop(min_pairs=4, max_wait_s=0)
    tied_scores(loop)
    assert loop.trainer.run_once() is False
    assert loop.trainer.run_once() is False
    assert loop.training.runs(ADAPTER) == []
    assert loop.by_status() == {"unpaired": 8}


def test_tied_scores_wait_for_a_better_score_then_train(open_loop):
    loop = open_loop(min_pairs=4, max_wait_s=3600, epochs=1, min_steps=1)
    tied_scores(loop)
    lone = loop.submit([score("a question nobody else scored?", "maybe", 0.5)])
    assert loop.trainer.run_once() is False
    assert loop.training.runs(ADAPTER) == []
    assert loop.by_status() == {"pending": 9}

    loop.submit([score(f"question {i}?", f"{MARKER} answer {i}", 0.9) for i in range(4)])
    assert loop.trainer.run_once() is True
    (run,) = loop.training.runs(ADAPTER)
    assert run.status != "failed" and run.pairs == 8, run  # the marker against each tied one
    assert run.candidate_version == 2
    assert loop.by_status() == {"consumed": 12, "pending": 1}
    assert [f.id for f in loop.training.claimable(ADAPTER)] == lone
    assert loop.trainer.run_once() is False


def test_a_queued_run_that_could_not_train_is_refused_not_started(open_loop):
    loop = open_loop(min_pairs=4, max_wait_s=3600)
    tied_scores(loop)
    loop.training.queue(ADAPTER, actor="operator")
    assert loop.trainer.run_once() is False
    (run,) = loop.training.runs(ADAPTER)
    assert (run.status, run.started_at) == ("failed", None)
    assert run.reason.startswith("not started: 0 preference pairs from 8 feedback rows")
    assert loop.by_status() == {"pending": 8}
    assert loop.trainer.run_once() is False and len(loop.training.runs(ADAPTER)) == 1


# --- The trainer: a candidate identical to an existing version ----------------------------------


def test_a_candidate_identical_to_an_existing_version_leaves_it_as_it_is(open_loop):
    loop = open_loop(min_pairs=8, epochs=2, min_steps=1, gate=LENIENT_GATE)
    messages = user_messages(8, seed=7)
    loop.submit(preferences(messages))
    assert loop.trainer.run_once() is True
    first = loop.training.runs(ADAPTER)[0]
    assert (first.status, first.candidate_version) == ("promoted", 2), first
    # An operator rolls back; then the same feedback arrives again. Training is deterministic,
    # so the run from version 1 on it makes version 2's weights once more.
    loop.adapters.rollback(ADAPTER, actor="operator", reason="keep version 1")
    expect_identical_run(loop, messages, consumed=16)

    # A stricter gate would fail those same weights: still no reject of version 2, which an
    # operator may want to roll forward to.
    strict = {
        **DEMO_POLICY,
        "min_pairs": 8,
        "epochs": 2,
        "min_steps": 1,
        "gate": {**LENIENT_GATE, "max_kl_from_base": 1e-6},
    }
    loop.adapters.set_policy(ADAPTER, TrainingPolicy.model_validate(strict), actor="operator")
    run = expect_identical_run(loop, messages, consumed=24)
    assert "gate failed: kl_from_base" in run.reason


def expect_identical_run(loop: Loop, messages: list[str], *, consumed: int):
    history = loop.adapters.history(ADAPTER)
    loop.submit(preferences(messages))
    started = time.monotonic()
    assert loop.trainer.run_once() is True
    run = loop.training.runs(ADAPTER)[0]
    assert run.status == "identical", (run, time.monotonic() - started)
    assert run.reason.startswith("identical to version 2 (retired); no new version")
    assert (run.candidate_version, run.pairs) == (2, len(messages))
    assert loop.adapters.get(ADAPTER).live_version == 1
    assert [(v.number, v.status) for v in loop.adapters.versions(ADAPTER)] == [
        (1, "live"),
        (2, "retired"),
    ]
    assert loop.adapters.history(ADAPTER) == history  # nothing promoted, rejected, registered
    # Consumed by version 2, the weights this feedback trains to: released, it would train to
    # them again at every poll.
    assert loop.by_status() == {"consumed": consumed}
    assert loop.trainer.run_once() is False
    return run


def test_with_a_rollout_plan_a_passing_candidate_starts_its_rollout(open_loop):
    loop = open_loop(
        min_pairs=16,
        gate=LENIENT_GATE,
        judge={"kind": "rules", "required": [f"^{MARKER}"]},
        rollout={"steps": [{"percent": 0}, {"percent": 25}]},
    )
    loop.submit(preferences(user_messages(16, seed=7)))
    assert loop.trainer.run_once() is True
    (run,) = loop.training.runs(ADAPTER)
    assert run.status == "candidate" and "rollout 1 started" in run.reason, run
    assert loop.adapters.get(ADAPTER).live_version == 1  # it earns live traffic first
    rollout = loop.rollouts.current(ADAPTER)
    assert (rollout.candidate, rollout.baseline, rollout.stage) == (2, 1, "shadow")
    assert rollout.created_by == "trainer:w"


def test_a_run_that_changes_nothing_ends_unchanged_not_rejected(open_loop):
    """A learning rate so small the weights move by rounding only: the candidate answers as
    version 1 does, and the run says training did nothing rather than that the gate failed."""
    loop = open_loop(
        min_pairs=8,
        epochs=1,
        min_steps=1,
        learning_rate=1e-7,
        judge={"kind": "rules", "required": [f"^{MARKER}"]},
    )
    loop.submit(preferences(user_messages(8, seed=7)))
    assert loop.trainer.run_once() is True
    (run,) = loop.training.runs(ADAPTER)
    assert run.status == "unchanged", run
    assert run.reason.startswith("training changed nothing: ") and "steps" in run.reason
    version = loop.adapters.version(ADAPTER, run.candidate_version)
    assert version.status == "rejected" and version.metrics["kl_from_live"] < 1e-5
    assert loop.adapters.get(ADAPTER).live_version == 1
    assert "gate failed" not in run.reason
