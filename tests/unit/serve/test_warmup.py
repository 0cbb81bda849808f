"""The adapter warmer: one load per version, failures retried after a pause, and what it
remembers bounded by the versions requests can still reach.

The tests drive the warmer over a stand-in engine that records loads and unloads (the
engine protocol is the seam); tests/e2e/test_adapter_cache.py does the same on real vLLM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loraloop.adapters.db import Database
from loraloop.serve.admission import AdmissionGate
from loraloop.serve.engine.interface import AdapterRef
from loraloop.serve.errors import AdapterUnavailable
from loraloop.serve.metrics import ServeMetrics
from loraloop.serve.routing import CurrentRoutes, RoutingSnapshot
from loraloop.serve.warmup import AdapterWarmer


class RecordingEngine:
    """Loads and unloads adapters by LoRA id; ids in `broken` fail to load."""

    active_requests = aborted_requests = 0

    def __init__(self) -> None:
        self.loaded: set[int] = set()
        self.loads: list[int] = []
        self.broken: set[int] = set()

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.loads.append(adapter.lora_int_id)
        if adapter.lora_int_id in self.broken:
            raise AdapterUnavailable(f"{adapter.served_name} could not be loaded")
        self.loaded.add(adapter.lora_int_id)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self.loaded.discard(adapter.lora_int_id)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def version(lora_id: int) -> AdapterRef:
    return AdapterRef("acme/support", lora_id, lora_id, Path(f"/weights/{lora_id}"))


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def warmer(engine, clock, tmp_path) -> AdapterWarmer:
    metrics = ServeMetrics(
        AdmissionGate(8),
        engine,
        CurrentRoutes(RoutingSnapshot("demo")),
        Database(f"sqlite:///{tmp_path / 'unused.db'}"),
    )
    return AdapterWarmer(engine, metrics, retry_failed_s=30, clock=clock)


def test_concurrent_requests_for_one_version_load_it_once(warmer, engine):
    async def many():
        await asyncio.gather(*(warmer.ensure_loaded(version(1)) for _ in range(20)))

    asyncio.run(many())
    assert engine.loads == [1]


def test_a_failed_load_fails_fast_then_is_retried_after_the_pause(warmer, engine, clock):
    engine.broken.add(2)

    async def attempt() -> None:
        await warmer.ensure_loaded(version(2))

    for _ in range(3):
        with pytest.raises(AdapterUnavailable):
            asyncio.run(attempt())
    assert engine.loads == [2]  # failed fast, without asking the engine again
    engine.broken.clear()  # the passing cause went away
    clock.now = 29
    with pytest.raises(AdapterUnavailable):
        asyncio.run(attempt())
    clock.now = 31
    asyncio.run(attempt())
    assert engine.loads == [2, 2] and engine.loaded == {2}


def test_versions_no_request_can_reach_are_forgotten_and_unloaded(warmer, engine):
    engine.broken.add(7)

    async def serve_then_shrink() -> None:
        await warmer.warm([version(n) for n in range(1, 9)])  # 7 fails, the rest load
        await warmer.keep_only([version(3), version(4)])

    asyncio.run(serve_then_shrink())
    assert engine.loaded == {3, 4}
    assert warmer.remembered == 2
