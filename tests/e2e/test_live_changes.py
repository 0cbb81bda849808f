"""Serving follows the registry: promote and rollback under load, canary traffic, replicas.

Each runs on SQLite (the session server) and on PostgreSQL (a second vLLM server); the
replica test adds a reference-engine server on the same PostgreSQL registry and data volume.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from loraloop.serve.cli.client import AdminApiError, AdminClient

from ..conftest import ADMIN_KEY, ENGINE_ARGS, async_client, start_server
from ..support import BACKENDS, fresh_postgres_database

MESSAGES = [{"role": "user", "content": "tell me about your product"}]
CLIENTS = 8
PHASE_S = 1.5


@pytest.fixture(scope="module")
def postgres_url():
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def shared_data_dir(tmp_path_factory) -> Path:
    """Replicas share the weight store, as pods share a volume."""
    return tmp_path_factory.mktemp("replica-data")


@pytest.fixture(scope="module")
def pg_vllm_server(demo_model, postgres_url, shared_data_dir, tmp_path_factory):
    server = start_server(
        ["--model", str(demo_model), *ENGINE_ARGS, "--database-url", postgres_url],
        tmp_path_factory.mktemp("logs") / "pg-vllm-server.log",
        shared_data_dir,
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_reference_server(demo_model, postgres_url, shared_data_dir, tmp_path_factory):
    server = start_server(
        [
            "--model",
            str(demo_model),
            "--engine",
            "reference",
            *ENGINE_ARGS,
            "--database-url",
            postgres_url,
        ],
        tmp_path_factory.mktemp("logs") / "pg-reference-server.log",
        shared_data_dir,
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def registry_server(request):
    """The session server (SQLite registry), or a vLLM server on a PostgreSQL registry."""
    return request.getfixturevalue("vllm_server" if request.param == "sqlite" else "pg_vllm_server")


def two_versions(server, adapter_id: str, adapter_dirs: dict[str, Path]) -> AdminClient:
    """`adapter_id` with versions 1 and 2 (different weights), version 1 live."""
    admin = AdminClient(server.url, ADMIN_KEY, actor="tests")
    try:
        admin.create_tenant(adapter_id.split("/")[0])
    except AdminApiError as exists:
        assert exists.status == 409
    admin.create_adapter(adapter_id)
    for source in ("initech/tps", "initech/memo"):
        admin.register(adapter_id, adapter_dirs[source])
    admin.promote(adapter_id, 1)
    return admin


@dataclass(frozen=True)
class Served:
    started: float
    finished: float
    version: int


async def _ask(client: openai.AsyncOpenAI, model: str, stream: bool) -> str:
    if not stream:
        response = await client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=8, temperature=0
        )
        return response.model
    chunks = await client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    )
    names = {chunk.model async for chunk in chunks}
    assert len(names) == 1  # one version serves a whole response
    return names.pop()


async def _send_until(
    stop: asyncio.Event, client, model: str, stream: bool, served: list[Served], failures: list[str]
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            name = await _ask(client, model, stream)
        except Exception as exc:  # every failure is reported by the test
            failures.append(repr(exc))
            continue
        served.append(Served(started, time.monotonic(), int(name.rsplit("@", 1)[1])))


async def _promote_and_roll_back_under_load(server, admin: AdminClient, adapter_id: str):
    served, failures, stop = [], [], asyncio.Event()
    client = async_client(server)
    senders = [
        asyncio.create_task(_send_until(stop, client, adapter_id, i % 2 == 0, served, failures))
        for i in range(CLIENTS)
    ]
    await asyncio.sleep(PHASE_S)
    marks = [time.monotonic()]
    await asyncio.to_thread(admin.promote, adapter_id, 2, expected_live=1)
    marks.append(time.monotonic())
    await asyncio.sleep(PHASE_S)
    marks.append(time.monotonic())
    await asyncio.to_thread(admin.rollback, adapter_id, reason="test")
    marks.append(time.monotonic())
    await asyncio.sleep(PHASE_S)
    stop.set()
    await asyncio.gather(*senders)
    await client.close()
    return served, failures, marks


def test_promote_and_rollback_under_load_fail_nothing(registry_server, adapter_dirs):
    admin = two_versions(registry_server, "load/chat", adapter_dirs)
    served, failures, (promoting, promoted, rolling, rolled) = asyncio.run(
        _promote_and_roll_back_under_load(registry_server, admin, "load/chat")
    )
    admin.close()
    assert failures == []
    assert len(served) > 6 * CLIENTS
    for s in served:
        if s.version == 2:  # v2 was live from `promoting` to `rolled` at the widest
            assert s.started < rolled and s.finished > promoting, s
        else:  # v1 was live until `promoted` and again from `rolling`
            assert s.version == 1 and (s.started < promoted or s.finished > rolling), s
    between = [s.version for s in served if s.started > promoted and s.finished < rolling]
    after = [s.version for s in served if s.started > rolled]
    assert between and set(between) == {2}  # once promote returned, every new request got v2
    assert after and set(after) == {1}


async def _serve_many(server, model: str, count: int) -> list[str]:
    client = async_client(server)
    gate = asyncio.Semaphore(CLIENTS)

    async def one() -> str:
        async with gate:
            response = await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=1
            )
            return response.model

    try:
        return await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


def test_canary_takes_its_share_of_unpinned_requests(registry_server, adapter_dirs):
    with two_versions(registry_server, "canary/chat", adapter_dirs) as admin:
        admin.set_canary("canary/chat", 2, 25, reason="try v2 on a quarter")
        served = asyncio.run(_serve_many(registry_server, "canary/chat", 400))
        pinned = asyncio.run(_serve_many(registry_server, "canary/chat@1", 40))
        admin.clear_canary("canary/chat")
        after = asyncio.run(_serve_many(registry_server, "canary/chat", 40))
    to_canary = served.count("canary/chat@2")
    assert set(served) == {"canary/chat@1", "canary/chat@2"}
    # Binomial(400, 0.25): mean 100, sd 8.7; outside mean +- 4 sd happens 6 times in 100,000.
    assert 65 <= to_canary <= 135, to_canary
    assert set(pinned) == {"canary/chat@1"} and set(after) == {"canary/chat@1"}


def _wait_served(server, model: str, expected: str, timeout_s: float) -> float:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
        except openai.NotFoundError:  # this replica has not seen the adapter yet
            response = None
        if response is not None and response.model == expected:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{expected} not served within {timeout_s}s")


def test_a_promote_through_one_replica_is_served_by_the_other(
    pg_vllm_server, pg_reference_server, adapter_dirs
):
    with two_versions(pg_reference_server, "replica/chat", adapter_dirs) as through_reference:
        _wait_served(pg_vllm_server, "replica/chat", "replica/chat@1", timeout_s=2)
        through_reference.promote("replica/chat", 2)
        assert _wait_served(pg_vllm_server, "replica/chat", "replica/chat@2", timeout_s=2) < 2
    with AdminClient(pg_vllm_server.url, ADMIN_KEY) as through_vllm:
        through_vllm.rollback("replica/chat")
    assert _wait_served(pg_reference_server, "replica/chat", "replica/chat@1", timeout_s=2) < 2
