"""Dependencies fail under a running server, for real, and the service degrades as promised.

Each test makes the real component fail (the tests' PostgreSQL server is stopped and started
again) and checks what users and operators see, and that nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from loraloop.adapters.db import sqlite_url
from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import open_registry
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import NewVersion
from loraloop.serve.cli.client import AdminApiError, AdminClient
from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, user_messages
from loraloop.serve.connections import REQUEST_HEAD_TIMEOUT_S
from loraloop.trainer.demo_model import build_random_adapter
from loraloop.trainer.loop import TrainerLoop

from ..conftest import ADMIN_HEADERS, ADMIN_KEY, ENGINE_ARGS, provision, start_server
from ..support import (
    fresh_postgres_database,
    local_postgres_cluster,
    postgres_stopped,
    read_metric,
    scaled,
    wait_until,
    wait_while_progressing,
)

ADAPTER = "acme/support"
MESSAGES = [{"role": "user", "content": "where is my order?"}]
# A request refused for the outage must come back within this, never hang.
REFUSAL_BOUND_S = 15


def feedback(server, n: int) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/feedback",
        headers=ADMIN_HEADERS,
        timeout=60,
        json={
            "adapter": ADAPTER,
            "messages": MESSAGES,
            "chosen": f"it ships today ({n})",
            "rejected": "no idea",
        },
    )


def assert_registry_unavailable(response: httpx.Response, started: float) -> None:
    assert time.monotonic() - started < REFUSAL_BOUND_S
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("registry_unavailable", "server_error")
    assert "registry" in error["message"]


def test_postgres_outage_keeps_inference_refuses_writes_and_recovers(
    demo_model, adapter_dirs, tmp_path
):
    version = local_postgres_cluster()
    if version is None:
        pytest.skip("the tests' PostgreSQL is not a local cluster this test can stop")
    with fresh_postgres_database() as url:
        server = start_server(
            [
                "--model",
                str(demo_model),
                "--engine",
                "reference",
                *ENGINE_ARGS,
                "--database-url",
                url,
            ],
            tmp_path / "server.log",
            tmp_path / "data",
        ).wait_ready()
        try:
            provision(server, {ADAPTER: adapter_dirs[ADAPTER]})
            assert feedback(server, 0).status_code == 201
            chat = {"model": ADAPTER, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
            before = httpx.post(
                f"{server.url}/v1/chat/completions", json=chat, headers=ADMIN_HEADERS, timeout=60
            ).json()

            with postgres_stopped(version):
                wait_until(
                    lambda: httpx.get(f"{server.url}/ready").json()["status"] == "degraded",
                    30,
                    "/ready to say degraded",
                )
                ready = httpx.get(f"{server.url}/ready")
                assert ready.status_code == 200  # still routed to: it still answers
                assert ready.json()["registry"] == "unavailable"
                assert read_metric(server.url, "loraloop_registry_available") == 0
                # Inference: every request answered, from the last routing snapshot.
                for _ in range(10):
                    answer = httpx.post(
                        f"{server.url}/v1/chat/completions",
                        json=chat,
                        headers=ADMIN_HEADERS,
                        timeout=60,
                    )
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["choices"] == before["choices"]
                # Writes and registry reads: a prompt 503 that says why and when to retry.
                for request in (
                    lambda: feedback(server, 1),
                    lambda: httpx.post(
                        f"{server.url}/admin/v1/tenants",
                        json={"name": "later"},
                        headers=ADMIN_HEADERS,
                        timeout=60,
                    ),
                    lambda: httpx.get(
                        f"{server.url}/admin/v1/adapters", headers=ADMIN_HEADERS, timeout=60
                    ),
                    lambda: httpx.get(
                        f"{server.url}/v1/feedback/stats",
                        params={"adapter": ADAPTER},
                        headers=ADMIN_HEADERS,
                        timeout=60,
                    ),
                ):
                    started = time.monotonic()
                    assert_registry_unavailable(request(), started)
                # A batch is one write: refused whole, to be sent again whole.
                started = time.monotonic()
                assert_registry_unavailable(
                    httpx.post(
                        f"{server.url}/v1/feedback/batch",
                        headers=ADMIN_HEADERS,
                        timeout=60,
                        content=json.dumps(
                            {"adapter": ADAPTER, "prompt": "hi", "chosen": "a", "rejected": "b"}
                        ),
                    ),
                    started,
                )

            # Back by itself within a few polls; writes are taken again at once.
            wait_until(
                lambda: httpx.get(f"{server.url}/ready").json()["status"] == "ready",
                30,
                "/ready to say ready again",
            )
            assert read_metric(server.url, "loraloop_registry_available") == 1
            assert feedback(server, 2).status_code == 201
        finally:
            server.stop()
        # Nothing acknowledged is lost, nothing refused was half-written.
        database = create_engine(url)
        with database.connect() as connection:
            chosen = connection.execute(text("SELECT chosen FROM feedback ORDER BY id")).scalars()
            assert list(chosen) == ["it ships today (0)", "it ships today (2)"]
        database.dispose()


def engine_core(server) -> psutil.Process:
    """vLLM's engine core: the child process of the server that runs the model."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in " ".join([c.name(), *c.cmdline()])]
    assert len(cores) == 1, [(c.pid, c.name()) for c in children]
    return cores[0]


def test_engine_death_answers_503_and_ends_streams_with_an_error(demo_model, tmp_path):
    server = start_server(
        ["--model", str(demo_model), *ENGINE_ARGS], tmp_path / "server.log", tmp_path / "data"
    ).wait_ready()
    try:
        body = {
            "model": "demo",
            "messages": MESSAGES,
            "max_tokens": 1000,
            "stream": True,
            "temperature": 1.0,
            "seed": 1,
        }
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json=body,
            headers=ADMIN_HEADERS,
            timeout=60,
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            engine_core(server).kill()
            events = [line[6:] for line in lines if line.startswith("data: ")]
        # Not a silent cut: the stream says why it ended, then ends as streams do.
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "engine_unavailable"
        wait_until(
            lambda: httpx.get(f"{server.url}/health").status_code == 503,
            30,
            "/health to answer 503",
        )
        assert httpx.get(f"{server.url}/ready").status_code == 503
        refused = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers=ADMIN_HEADERS,
            json={**body, "stream": False},
            timeout=60,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_unavailable"
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        server.stop()


def test_exit_on_engine_loss_ends_the_process_with_status_4(demo_model, tmp_path):
    server = start_server(
        ["--model", str(demo_model), *ENGINE_ARGS, "--exit-on-engine-loss"],
        tmp_path / "server.log",
        tmp_path / "data",
    ).wait_ready()
    try:
        engine_core(server).kill()
        assert server.process.wait(timeout=60) == 4
        assert "the engine is lost" in (tmp_path / "server.log").read_text()
    finally:
        server.stop()


@contextmanager
def small_filesystem(path: Path, size: str):
    """A size-limited tmpfs at `path`, for as long as the block runs."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited filesystem here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(filesystem: Path, leave_bytes: int) -> Path:
    """A file that takes all the room but `leave_bytes`."""
    filler = filesystem / "filler"
    free = shutil.disk_usage(filesystem).free - leave_bytes
    with open(filler, "wb") as out:
        out.write(b"\0" * max(free, 0))
    return filler


def test_disk_full_refuses_an_upload_whole_and_serving_goes_on(demo_model, adapter_dirs, tmp_path):
    big = build_random_adapter(demo_model, tmp_path / "big", seed=9, rank=64)
    with small_filesystem(tmp_path / "volume", "24m") as volume:
        server = start_server(
            ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
            tmp_path / "server.log",
            volume / "data",
        ).wait_ready()
        try:
            provision(server, {ADAPTER: adapter_dirs[ADAPTER]})
            store = volume / "data" / "weights"
            stored_before = sorted(store.rglob("*.safetensors"))
            filler = fill(volume, leave_bytes=256 << 10)
            with AdminClient(server.url, ADMIN_KEY, actor="tests") as admin:
                with pytest.raises(AdminApiError) as refused:
                    admin.register(ADAPTER, big)
                assert refused.value.status == 507
                assert "no room" in refused.value.message
                # Nothing half-written, the registry unchanged, serving as before.
                assert sorted(store.rglob("*.safetensors")) == stored_before
                assert not any((store / "staging").iterdir())
                assert [v["version"] for v in admin.list_versions(ADAPTER)] == [1]
                answer = httpx.post(
                    f"{server.url}/v1/chat/completions",
                    headers=ADMIN_HEADERS,
                    json={"model": ADAPTER, "messages": MESSAGES, "max_tokens": 4},
                    timeout=60,
                )
                assert answer.status_code == 200, answer.text
                # Room again: the same upload goes through.
                filler.unlink()
                version, created = admin.register(ADAPTER, big)
                assert created and version["version"] == 2
        finally:
            server.stop()


IDLE_CONNECTIONS, SLOW_CLIENTS = 500, 200


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=2) == b""
    except ConnectionError:  # reset: closed as well
        return True
    except TimeoutError:
        return False


async def _drip(writer: asyncio.StreamWriter) -> None:
    """A slow-loris client: a request head that never ends, a byte a second."""
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: loraloop\r\nX-Slow: ")
        while True:
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(1)
    except ConnectionError:
        return  # the server closed it


def test_idle_and_slow_loris_connections_do_not_stop_normal_clients(demo_model, tmp_path):
    server = start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
        tmp_path / "server.log",
        tmp_path / "data",
    ).wait_ready()
    chat = {"model": "demo", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}

    async def scenario() -> None:
        def connect():
            return asyncio.open_connection("127.0.0.1", server.port)

        idle = [await connect() for _ in range(IDLE_CONNECTIONS)]
        slow = [await connect() for _ in range(SLOW_CLIENTS)]
        drips = [asyncio.create_task(_drip(writer)) for _, writer in slow]
        async with httpx.AsyncClient(
            base_url=server.url, headers=ADMIN_HEADERS, timeout=30
        ) as client:
            for _ in range(10):  # normal clients, while all of those are open
                answer = await client.post("/v1/chat/completions", json=chat)
                assert answer.status_code == 200, answer.text
        # Past the deadline for a request head, the server has closed every one of them.
        await asyncio.sleep(REQUEST_HEAD_TIMEOUT_S + 2)
        closed = [await _closed_by_server(reader) for reader, _ in idle + slow]
        assert sum(closed) == IDLE_CONNECTIONS + SLOW_CLIENTS
        await asyncio.wait_for(asyncio.gather(*drips), timeout=10)
        for _, writer in idle + slow:
            writer.close()

    try:
        asyncio.run(scenario())
        # and it still serves
        assert (
            httpx.post(
                f"{server.url}/v1/chat/completions", json=chat, headers=ADMIN_HEADERS, timeout=30
            ).status_code
            == 200
        )
    finally:
        server.stop()


def adapter_with_feedback(registry, v1: Path, *, pairs: int, **policy) -> None:
    """ADAPTER at version 1, due for a run on `pairs` preferences (min_pairs = pairs)."""
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    registry.adapters.register(
        ADAPTER, {name: v1 / name for name in ADAPTER_FILES}, NewVersion(), actor="test"
    )
    registry.adapters.promote(ADAPTER, 1, actor="test")
    registry.adapters.set_policy(
        ADAPTER,
        TrainingPolicy.model_validate({**DEMO_POLICY, "min_pairs": pairs, **policy}),
        actor="test",
    )
    for n, prompt in enumerate(user_messages(pairs, seed=5)):
        registry.feedback.submit(
            NewFeedback(
                ADAPTER,
                1,
                "preference",
                StoredPrompt.chat([("user", prompt)]),
                chosen=f"{MARKER} yes {n}",
                rejected=f"no {n}",
            )
        )


def test_a_trainer_that_cannot_write_its_candidate_fails_the_run_and_releases_feedback(
    demo_model, adapter_dirs, tmp_path
):
    """The weight volume full under a trainer: the run fails with the reason, its feedback
    goes back to pending, and no version appears."""
    with small_filesystem(tmp_path / "volume", "24m") as volume:
        registry = open_registry(
            model=str(demo_model),
            aliases=[],
            data_dir=volume,
            database_url=sqlite_url(tmp_path),
            max_rank=64,
            max_bytes=1 << 30,
        )
        try:
            adapter_with_feedback(registry, adapter_dirs[ADAPTER], pairs=8)
            filler = fill(volume, leave_bytes=16 << 10)
            trainer = TrainerLoop(registry, demo_model, worker="test", lease_s=60)
            assert trainer.run_once()
            [run] = registry.training.runs(ADAPTER)
            assert run.status == "failed", run
            assert "No space left on device" in run.reason
            assert registry.feedback.stats(ADAPTER).by_status == {"pending": 8}
            assert [v.number for v in registry.adapters.versions(ADAPTER)] == [1]
            assert not any(registry.store.staging.iterdir())
            filler.unlink()
        finally:
            registry.db.dispose()


def start_trainer(demo_model: Path, data_dir: Path, url: str, log_path: Path) -> subprocess.Popen:
    """The trainer sidecar as a process of its own, on a short lease and poll."""
    with open(log_path, "wb") as log:  # the child keeps its copy
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loraloop.trainer",
                "--model",
                str(demo_model),
                "--data-dir",
                str(data_dir),
                "--poll-s",
                "0.3",
                "--lease-s",
                "6",
            ],
            env={**os.environ, "LORALOOP_DATABASE_URL": url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def trainer_progress(registry, log_path: Path):
    """What changes while a trainer works: its log, and the runs' rows (a running one's
    progress is renewed every 2 s)."""

    def seen():
        try:
            runs = [(r.id, r.status, r.progress) for r in registry.training.runs(ADAPTER)]
        except RegistryUnavailable:
            runs = None
        return log_path.stat().st_size, runs

    return seen


def started_mid_run(registry, demo_model: Path, tmp_path: Path, url: str, log_path: Path):
    """A trainer process on the registry, once it is in the middle of training a run;
    (the process, what changes while it works)."""
    trainer = start_trainer(demo_model, tmp_path / "data", url, log_path)
    progress = trainer_progress(registry, log_path)
    try:
        wait_while_progressing(
            lambda: mid_training(registry), progress, 120, "a run in the middle of training"
        )
    except BaseException:  # the caller never gets the process to stop
        trainer.kill()
        trainer.wait()
        raise
    return trainer, progress


def mid_training(registry) -> bool:
    return any(
        r.status == "running" and r.progress.get("step") for r in registry.training.runs(ADAPTER)
    )


def stop_trainer(trainer: subprocess.Popen, log_path: Path, within_s: float = 30) -> float:
    """SIGTERM, and the seconds until the trainer exited; it must within `within_s`."""
    started = time.monotonic()
    trainer.terminate()
    try:
        trainer.wait(timeout=scaled(within_s))
    except subprocess.TimeoutExpired:
        trainer.kill()
        trainer.wait()
        raise AssertionError(
            f"the trainer did not exit within {scaled(within_s):.0f} s of "
            f"SIGTERM:\n{log_path.read_text()[-3000:]}"
        ) from None
    return time.monotonic() - started


def test_a_trainer_mid_run_through_a_database_outage_loses_at_most_that_run(
    demo_model, adapter_dirs, tmp_path
):
    """PostgreSQL stops while the trainer trains, then comes back: no half-recorded version,
    no feedback lost or used twice, and the feedback ends up trained on."""
    version = local_postgres_cluster()
    if version is None:
        pytest.skip("the tests' PostgreSQL is not a local cluster this test can stop")
    with fresh_postgres_database() as url:
        registry = open_registry(
            model=str(demo_model),
            aliases=[],
            data_dir=tmp_path / "data",
            database_url=url,
            max_rank=64,
            max_bytes=1 << 30,
        )
        trainer, log_path = None, tmp_path / "trainer.log"
        try:
            # Long enough a run to be caught in the middle of it.
            adapter_with_feedback(registry, adapter_dirs[ADAPTER], pairs=16, epochs=40)
            trainer, progress = started_mid_run(registry, demo_model, tmp_path, url, log_path)
            with postgres_stopped(version):
                time.sleep(8)  # longer than the lease: the run's claim lapses meanwhile
            # The run that lost its lease stops at its next step; the next one trains.
            wait_while_progressing(
                lambda: any(
                    r.status in ("promoted", "rejected", "candidate")
                    for r in registry.training.runs(ADAPTER)
                ),
                progress,
                60,
                "a run that finished",
            )
            runs = registry.training.runs(ADAPTER)
            finished = [r for r in runs if r.status in ("promoted", "rejected", "candidate")]
            assert len(finished) == 1 and len(runs) <= 2, runs
            # Every version was registered whole, by the run that finished.
            versions = registry.adapters.versions(ADAPTER)
            assert [v.number for v in versions] == [1, finished[0].candidate_version]
            assert registry.feedback.stats(ADAPTER).by_status == {"consumed": 16}
        finally:
            if trainer is not None:
                stop_trainer(trainer, log_path)
            registry.db.dispose()


def test_a_trainer_stopped_mid_run_exits_at_once_and_its_feedback_goes_back(
    demo_model, adapter_dirs, tmp_path
):
    """SIGTERM while a run trains, with the database up and then with it down: the trainer
    exits within seconds, not at the end of the run (a pod's grace period is 30 s); the
    feedback goes back to pending at once, or, the database down, when the lease lapses."""
    version = local_postgres_cluster()
    if version is None:
        pytest.skip("the tests' PostgreSQL is not a local cluster this test can stop")
    with fresh_postgres_database() as url:
        registry = open_registry(
            model=str(demo_model),
            aliases=[],
            data_dir=tmp_path / "data",
            database_url=url,
            max_rank=64,
            max_bytes=1 << 30,
        )
        trainer, log_path = None, tmp_path / "trainer.log"
        try:
            adapter_with_feedback(registry, adapter_dirs[ADAPTER], pairs=16, epochs=100)
            trainer, _ = started_mid_run(registry, demo_model, tmp_path, url, log_path)
            stop_trainer(trainer, log_path, within_s=15)
            (stopped,) = registry.training.runs(ADAPTER)
            assert stopped.status == "failed" and stopped.reason.startswith("stopped:"), stopped
            assert registry.feedback.stats(ADAPTER).by_status == {"pending": 16}

            trainer, _ = started_mid_run(registry, demo_model, tmp_path, url, log_path)
            with postgres_stopped(version):
                stop_trainer(trainer, log_path, within_s=15)
            # Nothing could be written: the run's lease lapses, and its feedback goes back.
            wait_until(
                lambda: len(registry.training.claimable(ADAPTER)) == 16,
                scaled(30),
                "the feedback claimable again",
            )
            assert [v.number for v in registry.adapters.versions(ADAPTER)] == [1]
        finally:
            if trainer is not None and trainer.poll() is None:
                trainer.kill()
            registry.db.dispose()
