"""The adapter warmer: one load per version, failures retried after a pause, and what it
remembers bounded by the versions requests can still reach.

The unit tests drive the warmer over a stand-in engine that records loads and unloads (the
engine protocol is the seam); the last test serves more versions than the real vLLM server's
host cache holds, so versions are evicted and loaded again from their files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from loraloop.adapters.db import Database
from loraloop.serve.admission import AdmissionGate
from loraloop.serve.cli.client import AdminClient
from loraloop.serve.engine.protocol import AdapterRef
from loraloop.serve.errors import AdapterUnavailable
from loraloop.serve.metrics import ServeMetrics
from loraloop.serve.routing import RoutingSnapshot, RoutingTable
from loraloop.serve.warmup import AdapterWarmer
from loraloop.trainer.demo_model import build_random_adapter

from .conftest import ADMIN_HEADERS, ADMIN_KEY, LORA_CACHE_ARGS


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
    metrics = ServeMetrics(AdmissionGate(8), engine, RoutingTable(RoutingSnapshot("demo")),
                           Database(f"sqlite:///{tmp_path / 'unused.db'}"))
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


# -- with the real vLLM server -------------------------------------------------------------

HOST_CACHE = int(LORA_CACHE_ARGS[LORA_CACHE_ARGS.index("--max-cpu-loras") + 1])


def greedy(server, model: str) -> str:
    body = {"model": model, "prompt": "the weather today", "max_tokens": 8, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=ADMIN_HEADERS,
                          timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_more_versions_than_the_host_cache_keep_their_own_answers(vllm_server, demo_model,
                                                                  tmp_path):
    count = HOST_CACHE + 3
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="warmup-test") as admin:
        admin.create_adapter("acme/many")
        for seed in range(count):
            directory = build_random_adapter(demo_model, tmp_path / f"v{seed}", seed=100 + seed)
            admin.register("acme/many", directory)
        models = [f"acme/many@{n}" for n in range(1, count + 1)]
        first = {model: greedy(vllm_server, model) for model in models}
        assert len(set(first.values())) > 1  # the versions really differ
        # Round-robin again: each was evicted from the host cache and read back from disk.
        assert {model: greedy(vllm_server, model) for model in models} == first
        for n in (1, 2):
            admin.reject("acme/many", n, reason="unloaded")
        for model in models[:2]:
            body = {"model": model, "prompt": "x", "max_tokens": 2}
            response = httpx.post(f"{vllm_server.url}/v1/completions", json=body,
                                  headers=ADMIN_HEADERS, timeout=60)
            assert response.status_code == 404
        assert {model: greedy(vllm_server, model) for model in models[2:]} == {
            model: first[model] for model in models[2:]}
