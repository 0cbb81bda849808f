"""Guard counts of a rollout's versions: counted per request by each server, added up in a
real registry (SQLite and PostgreSQL), and kept while the registry is away.

Two servers' states are wired as the server wires them (app.build_state) on one registry;
their engines are scripted at the Engine protocol seam, so a test sets which version
answers what, and which fails.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from loraloop.adapters.db import Database
from loraloop.adapters.rollouts.book import RolloutBook
from loraloop.adapters.rollouts.counts import TPOT_BUCKETS
from loraloop.serve.app import build_state
from loraloop.serve.errors import NonFiniteOutput
from loraloop.serve.openai.protocol import ChatCompletionRequest

from .rollout_setup import (
    ADAPTER,
    PROMPT,
    ScriptedEngine,
    ask,
    server_settings,
    serving,
    start_rollout,
)

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


def guard_counts(counts: dict[str, int]) -> dict[str, int]:
    """The counts, with the time-per-token buckets summed into one figure."""
    timed = sum(value for name, value in counts.items() if name in TPOT_BUCKETS)
    return {**{n: v for n, v in counts.items() if n not in TPOT_BUCKETS}, "timed": timed}


async def left_after_the_first_token(state) -> None:
    request = ChatCompletionRequest(
        model=ADAPTER, max_tokens=8, messages=[{"role": "user", "content": PROMPT}]
    )
    generation = await state.service.chat(request, None)
    async with aclosing(generation.events) as events:
        await anext(events)


def test_guard_counts_from_two_servers_add_up(database, demo_model, adapter_dirs, tmp_path):
    engines = ScriptedEngine(), ScriptedEngine({2: [" ", "\n"]})  # the second: v2 is empty
    first, second = (
        build_state(server_settings(demo_model, tmp_path, database), engine) for engine in engines
    )
    rollout = start_rollout(first, adapter_dirs)

    async def scenario():
        for state in (first, second):
            await serving(state)
        await ask(first)
        await ask(first)
        await left_after_the_first_token(first)  # a request, not an error
        await ask(second, f"{ADAPTER}@2")
        engines[1].failing = {2}
        with pytest.raises(NonFiniteOutput):
            await ask(second, f"{ADAPTER}@2")
        for state in (first, second, second):  # a second flush adds nothing
            await state.rollouts.counts.flush()

    asyncio.run(scenario())
    counts = first.registry.rollouts.evidence(rollout).counts
    assert {version: guard_counts(c) for version, c in counts.items()} == {
        1: {"requests": 3, "timed": 2},
        2: {"requests": 2, "empty": 1, "errors": 1, "timed": 1},
    }


def test_counts_that_could_not_be_written_go_with_the_next_write(
    demo_model, adapter_dirs, tmp_path
):
    state = build_state(server_settings(demo_model, tmp_path), ScriptedEngine())
    rollout = start_rollout(state, adapter_dirs)
    recorder, away = state.rollouts.counts, Database(UNREACHABLE)
    recorder.book = RolloutBook(away, state.registry.rollouts.base)
    recorder.add(rollout, 1, "requests")
    asyncio.run(recorder.flush())  # refused, and kept
    recorder.add(rollout, 1, "requests")
    recorder.book = state.registry.rollouts  # the registry is back
    asyncio.run(recorder.flush())
    assert state.registry.rollouts.evidence(rollout).counts == {1: {"requests": 2}}
    away.dispose()
