"""Application scores as rollout evidence, end to end: scores posted through /v1/feedback
for either version of a rollout reach the driver's analysis and roll a worse candidate back
with their figures; the trainer's own judge scores, stored as feedback too, never count.
And the version a watch rolls back to cannot be rejected while the watch depends on it.

The server runs in process (the app with its lifespan) on a real SQLite or PostgreSQL
registry and a scripted engine at the Engine protocol seam; the driver is the trainer's.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from loraloop.adapters.errors import Conflict
from loraloop.adapters.feedback import Submission
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollout_policy import RolloutPolicy, RolloutStep
from loraloop.serve.app import create_app
from loraloop.trainer.judges.interface import Verdict
from loraloop.trainer.rollouts.driver import RolloutDriver
from loraloop.trainer.sampling import SampledAnswers, judged_feedback

from ...support import wait_until
from .rollout_setup import ADAPTER, PROMPT, ScriptedEngine, server_settings, start_rollout

# One canary step that nothing but the scores can decide (no comparisons, a long clock).
CANARY = RolloutPolicy(steps=[RolloutStep(percent=10, min_requests=0, max_seconds=3600)])
WATCHED = RolloutPolicy(
    steps=[RolloutStep(percent=10, min_requests=0, max_seconds=3600)], watch={"max_seconds": 3600}
)


class Pleased:
    """A trainer judge that likes every answer."""

    name, tally = "rules:pleased", None

    def score(self, prompt, completion):
        return Verdict(1.0, "fine")


def post_scores(client: TestClient, version: int, score: float, count: int) -> None:
    for i in range(count):
        reply = client.post(
            "/v1/feedback",
            json={
                "adapter": f"{ADAPTER}@{version}",
                "prompt": f"{PROMPT} {i}",
                "completion": f"answer {i}",
                "score": score,
                "judge": "thumbs",
            },
        )
        assert reply.status_code == 201, reply.text


@pytest.fixture
def served(database, demo_model, tmp_path):
    app = create_app(
        server_settings(demo_model, tmp_path, database, registry_poll_s=0.05), ScriptedEngine()
    )
    yield app, app.state.loraloop
    app.state.loraloop.registry.db.dispose()


def test_application_scores_roll_a_worse_candidate_back(served, adapter_dirs, demo_model):
    app, state = served
    rollout = start_rollout(state, adapter_dirs, CANARY)
    # The trainer's judge thinks the candidate is perfect: its scores are not the users'.
    sampled = [SampledAnswers(StoredPrompt(text=f"{PROMPT} {i}"), ("yes",)) for i in range(20)]
    state.registry.feedback.submit_many(
        [Submission(item) for item in judged_feedback(ADAPTER, 2, sampled, Pleased())]
    )
    with TestClient(app) as client:
        wait_until(lambda: ADAPTER in state.routes.snapshot.rollouts, 10, "the rollout routed")
        post_scores(client, 2, 0.0, 8)
        post_scores(client, 1, 1.0, 13)
    driver = RolloutDriver(state.registry, demo_model, worker="d", lease_s=30)
    assert driver.drive_once() == [f"{ADAPTER}: rollback"]
    ended = state.registry.rollouts.current(ADAPTER)
    assert (ended.id, ended.status, ended.decision["cause"]) == (
        rollout.id,
        "rolled_back",
        "scores",
    )
    event = next(
        e for e in state.registry.adapters.history(ADAPTER) if e.kind == "rollout_rollback"
    )
    assert event.detail["decision"]["scores"] == {
        "candidate_mean": 0.0,
        "baseline_mean": 1.0,
        "candidate_n": 8,
        "baseline_n": 13,
    }
    assert "application scores: mean 0.000 over 8" in event.reason


def test_the_watch_keeps_the_version_it_rolls_back_to(served, adapter_dirs, demo_model):
    app, state = served
    rollout = start_rollout(state, adapter_dirs, WATCHED)
    book, adapters = state.registry.rollouts, state.registry.adapters
    with TestClient(app) as client:
        wait_until(lambda: ADAPTER in state.routes.snapshot.rollouts, 10, "the rollout routed")
        post_scores(client, 1, 1.0, 13)  # the previous version's, before the watch
        assert book.acquire(rollout.id, worker="d", lease_s=30)
        book.advance(rollout.id, worker="d", decision={}, reason="better")
        assert (adapters.get(ADAPTER).live_version, book.current(ADAPTER).watching) == (2, True)
        refused = client.post(
            f"/admin/v1/adapters/{ADAPTER}/versions/1/reject", json={"reason": "old"}
        )
        assert refused.status_code == 409, refused.text
        assert f"rollout {rollout.id}" in refused.json()["error"]["message"]
        wait_until(
            lambda: (ADAPTER, 1) in state.routes.snapshot.versions,
            10,
            "the previous version still routed",
        )
        post_scores(client, 2, 0.0, 8)  # the candidate's, in the watch
    assert adapters.version(ADAPTER, 1).status == "retired"
    driver = RolloutDriver(state.registry, demo_model, worker="d", lease_s=30)
    assert driver.drive_once() == [f"{ADAPTER}: rollback"]
    assert book.current(ADAPTER).decision["cause"] == "scores"
    assert adapters.get(ADAPTER).live_version == 1


def test_the_previous_version_can_be_rejected_once_the_watch_is_over(served, adapter_dirs):
    _, state = served
    rollout = start_rollout(state, adapter_dirs, WATCHED)
    book, adapters = state.registry.rollouts, state.registry.adapters
    assert book.acquire(rollout.id, worker="d", lease_s=30)
    book.advance(rollout.id, worker="d", decision={}, reason="better")
    with pytest.raises(Conflict, match=f"rollout {rollout.id}"):
        adapters.reject(ADAPTER, 1, actor="op")
    book.abort(ADAPTER, actor="op")
    assert adapters.reject(ADAPTER, 1, actor="op").status == "rejected"
