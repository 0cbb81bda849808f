"""Shadow answers during a rollout: the version that did not serve a finished request
answers it again, out of band, and the pair of answers reaches the registry; the user's
request never notices.

The server's state is wired as the server wires it (app.build_state) on a real SQLite
registry. The pairing itself runs on the reference engine (transformers + PEFT, greedy);
the load rules and failures run on a scripted engine at the Engine protocol seam.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from loraloop.adapters.db import Database
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.rollouts.book import RolloutBook, ShadowPair
from loraloop.adapters.schema import ShadowComparison
from loraloop.serve.app import build_state
from loraloop.serve.engine.reference import ReferenceEngine
from loraloop.serve.state import ServerState

from .rollout_setup import (
    ADAPTER,
    PROMPT,
    SHADOW_ALWAYS,
    ScriptedEngine,
    ask,
    register_two_versions,
    server_settings,
    serving,
    start_rollout,
)

# Nothing listens on port 1: every write fails at once, as while the database is away.
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


class LoggedEngine(ReferenceEngine):
    """The reference engine, noting when each generation begins and ends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str]] = []

    async def generate(self, prompt_token_ids, sampling, adapter, request_id, cache_salt=None):
        self.log.append(("begins", request_id))
        async for delta in super().generate(
            prompt_token_ids, sampling, adapter, request_id, cache_salt
        ):
            yield delta
        self.log.append(("ends", request_id))


def shadow_results(state: ServerState) -> dict[str, float]:
    results = ("answered", "dropped_full", "dropped_busy", "dropped_stale", "failed")
    return {
        result: state.metrics.registry.get_sample_value(
            "loraloop_shadow_requests_total", {"adapter": ADAPTER, "result": result}
        )
        or 0
        for result in results
    }


async def until_shadows(state: ServerState, done: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(shadow_results(state).values()) < done:
        assert time.monotonic() < deadline, f"fewer than {done} shadows ended"
        await asyncio.sleep(0.02)


def stored_pairs(state: ServerState) -> list[tuple]:
    with state.registry.db.reading() as session:
        return [
            (
                row.step,
                row.served_version,
                None if row.prompt is None else StoredPrompt.from_json(row.prompt),
                row.candidate_answer,
                row.baseline_answer,
            )
            for row in session.scalars(select(ShadowComparison).order_by(ShadowComparison.id))
        ]


def test_a_shadowed_request_pairs_both_versions_greedy_answers(demo_model, adapter_dirs, tmp_path):
    engine = LoggedEngine(str(demo_model), max_model_len=512)
    state = build_state(server_settings(demo_model, tmp_path), engine)

    async def scenario():
        await serving(state)
        register_two_versions(state, adapter_dirs)
        await state.watcher.refresh()
        alone = {v: await ask(state, f"{ADAPTER}@{v}") for v in (1, 2)}  # before the rollout
        rollout = state.registry.rollouts.start(ADAPTER, 2, SHADOW_ALWAYS, actor="test")
        await state.watcher.refresh()
        runner = asyncio.create_task(state.rollouts.shadows.run())
        engine.log.clear()
        answered = await ask(state)
        engine.log.append(("the user's stream ended", ""))
        await until_shadows(state, 1)
        runner.cancel()
        await state.rollouts.shadows.writer.flush()
        await state.rollouts.counts.flush()
        return alone, rollout, answered

    alone, rollout, answered = asyncio.run(scenario())
    assert alone[1][0] != alone[2][0]  # the versions differ, so the pair can show which is which
    assert answered == (alone[1][0], f"{ADAPTER}@1")  # shadow stage: the live version answers
    assert stored_pairs(state) == [
        (0, 1, StoredPrompt.chat([("user", PROMPT)]), alone[2][0], alone[1][0])
    ]
    events = [(what, request_id.split("-")[0]) for what, request_id in engine.log]
    assert events == [
        ("begins", "chatcmpl"),
        ("ends", "chatcmpl"),
        ("the user's stream ended", ""),
        ("begins", "shadow"),
        ("ends", "shadow"),
    ]
    counts = state.registry.rollouts.evidence(rollout).counts
    assert counts[1]["requests"] == 1 and 2 not in counts  # shadows are no requests
    assert "errors" not in counts[1] and "empty" not in counts[1]


def test_a_full_queue_or_a_busy_engine_drops_shadows(demo_model, adapter_dirs, tmp_path):
    engine = ScriptedEngine()
    settings = server_settings(
        demo_model, tmp_path, shadow={"queue_size": 1, "max_active_requests": 2}
    )
    state = build_state(settings, engine)

    async def scenario():
        await serving(state)
        start_rollout(state, adapter_dirs)
        await state.watcher.refresh()
        answers = [await ask(state) for _ in range(3)]  # no runner yet: one job fits
        engine.active_requests += 3  # user requests in flight, above the bound of 2
        runner = asyncio.create_task(state.rollouts.shadows.run())
        await until_shadows(state, 3)
        engine.active_requests -= 3
        await ask(state)
        await until_shadows(state, 4)
        runner.cancel()
        return answers

    assert asyncio.run(scenario()) == [("v1 says hi", f"{ADAPTER}@1")] * 3
    assert shadow_results(state) == {
        "answered": 1,
        "dropped_full": 2,
        "dropped_busy": 1,
        "dropped_stale": 0,
        "failed": 0,
    }
    assert [r.split("-")[0] for r in engine.started] == ["chatcmpl"] * 4 + ["shadow"]


def test_a_shadow_queued_in_a_step_the_rollout_left_is_dropped_and_counted(
    demo_model, adapter_dirs, tmp_path
):
    """Its pair would be evidence for a step no longer decided: filed under the old step, it
    would never be judged, and silently so."""
    engine = ScriptedEngine()
    state = build_state(server_settings(demo_model, tmp_path), engine)

    async def scenario():
        await serving(state)
        rollout = start_rollout(state, adapter_dirs)
        await state.watcher.refresh()
        await ask(state)  # queued in the shadow step; no runner yet
        book = state.registry.rollouts
        assert book.acquire(rollout.id, worker="d", lease_s=30)
        book.advance(rollout.id, worker="d", decision={}, reason="better", step=0)
        await state.watcher.refresh()  # the server routes the watch now
        runner = asyncio.create_task(state.rollouts.shadows.run())
        await until_shadows(state, 1)
        runner.cancel()
        await state.rollouts.shadows.writer.flush()

    asyncio.run(scenario())
    assert shadow_results(state)["dropped_stale"] == 1
    assert stored_pairs(state) == []
    assert not any(r.startswith("shadow") for r in engine.started)


def test_a_failing_shadow_never_touches_the_users_request(demo_model, adapter_dirs, tmp_path):
    engine = ScriptedEngine()
    state = build_state(server_settings(demo_model, tmp_path), engine)

    async def scenario():
        await serving(state)
        start_rollout(state, adapter_dirs)
        await state.watcher.refresh()
        runner = asyncio.create_task(state.rollouts.shadows.run())
        engine.failing = {2}  # the candidate fails: here only ever in a shadow
        first = await ask(state)
        await until_shadows(state, 1)
        engine.failing = set()
        second = await ask(state, f"{ADAPTER}@2")  # the runner goes on after a failure
        await until_shadows(state, 2)
        runner.cancel()
        await state.rollouts.shadows.writer.flush()
        return first, second

    first, second = asyncio.run(scenario())
    assert first == ("v1 says hi", f"{ADAPTER}@1")
    assert second == ("v2 says hi", f"{ADAPTER}@2")
    assert shadow_results(state)["failed"] == 1
    # Only the second request's pair; the candidate served it, so the user saw its answer.
    assert [pair[1:2] + pair[3:] for pair in stored_pairs(state)] == [
        (2, "v2 says hi", "v1 says hi")
    ]


def test_pairs_wait_for_the_registry_within_a_bound(demo_model, adapter_dirs, tmp_path):
    state = build_state(server_settings(demo_model, tmp_path), ScriptedEngine())
    rollout = start_rollout(state, adapter_dirs)
    writer = state.rollouts.shadows.writer
    away, writer.max_kept = Database(UNREACHABLE), 2
    writer.book = RolloutBook(away, state.registry.rollouts.base)
    prompt = StoredPrompt(text=PROMPT)
    for answer in ("a", "b", "c"):
        writer.add(ShadowPair(rollout.id, 0, 1, prompt, f"{answer}2", f"{answer}1"))
    asyncio.run(writer.flush())  # refused: the newest two are kept
    writer.book = state.registry.rollouts  # the registry is back
    asyncio.run(writer.flush())
    assert [pair[3:] for pair in stored_pairs(state)] == [("b2", "b1"), ("c2", "c1")]
    away.dispose()


def test_the_server_drops_shadow_texts_past_their_retention(demo_model, adapter_dirs, tmp_path):
    settings = server_settings(demo_model, tmp_path, shadow={"retention_s": 0.3})
    state = build_state(settings, ScriptedEngine())
    rollout = start_rollout(state, adapter_dirs)
    writer = state.rollouts.shadows.writer
    writer.flush_s = writer.forget_s = 0.05
    assert writer.retention_s == 0.3  # from the settings

    async def scenario() -> list[tuple]:
        running = asyncio.create_task(writer.run())
        writer.add(ShadowPair(rollout.id, 0, 1, StoredPrompt(text=PROMPT), "v2", "v1"))
        deadline = time.monotonic() + 10
        while not stored_pairs(state) or stored_pairs(state)[0][2] is not None:
            assert time.monotonic() < deadline, stored_pairs(state)
            await asyncio.sleep(0.05)
        running.cancel()
        return stored_pairs(state)

    assert asyncio.run(scenario()) == [(0, 1, None, None, None)]
    assert state.registry.rollouts.evidence(rollout).unjudged == 1  # the comparison stays
