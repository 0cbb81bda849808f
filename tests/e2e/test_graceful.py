"""Stopping and crashing: SIGTERM drains streams, kill -9 loses no acknowledged feedback."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from loraloop.adapters.db import Database, sqlite_url
from loraloop.adapters.schema import Feedback

from ..conftest import ADMIN_HEADERS, ENGINE_ARGS, provision, start_server

MESSAGES = [{"role": "user", "content": "tell me a long story about the city"}]


def reference_server(demo_model, data_dir, log_dir, name: str):
    return start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
        log_dir / f"{name}.log",
        data_dir,
        env={"LORALOOP_LOG_FORMAT": "json"},
    ).wait_ready()


def test_sigterm_finishes_streams_in_flight_and_refuses_new_connections(
    demo_model, tokenizer, tmp_path
):
    server = reference_server(demo_model, tmp_path / "data", tmp_path, "drain")
    try:
        # The answer runs to max_tokens (its end of turn is ruled out): the stream is
        # certainly in flight when SIGTERM lands.
        never_stop = {str(tokenizer.convert_tokens_to_ids(tokenizer.eos_token)): -100}
        body = {
            "model": "demo",
            "messages": MESSAGES,
            "max_tokens": 120,
            "stream": True,
            "temperature": 0,
            "logit_bias": never_stop,
        }
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json=body,
            headers={**ADMIN_HEADERS, "X-Request-Id": "drain-1"},
            timeout=60,
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(server.process.pid, signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{server.url}/health", timeout=2)
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        # A clean exit: uvicorn finishes its shutdown, then re-raises SIGTERM on itself so
        # the exit status still says why it stopped.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop()
    logged = [
        json.loads(line)
        for line in server.log_path.read_text().splitlines()
        if line.startswith("{") and '"event": "request"' in line
    ]
    assert {
        "request_id": "drain-1",
        "status": 200,
        "adapter": "demo",
        "caller": "admin",
    }.items() <= logged[-1].items()


def _send_until_acknowledged(
    url: list[str], key: str, body: dict, headers: dict, acknowledged: dict
) -> None:
    """Retry with the same key until the server says it stored it, as a client would."""
    while True:
        try:
            response = httpx.post(
                f"{url[0]}/v1/feedback",
                json=body,
                timeout=10,
                headers={**headers, "Idempotency-Key": key},
            )
            if response.status_code == 201:
                acknowledged[key] = response.json()["id"]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def test_acknowledged_feedback_survives_kill_9_exactly_once(demo_model, adapter_dirs, tmp_path):
    data_dir = tmp_path / "data"
    first = reference_server(demo_model, data_dir, tmp_path, "first")
    url = [first.url]
    keys = provision(first, {"acme/support": adapter_dirs["acme/support"]})
    headers = {"Authorization": f"Bearer {keys['acme']}"}
    acknowledged: dict[str, int] = {}
    body = {"adapter": "acme/support", "prompt": "hi", "chosen": "hello", "rejected": "go"}
    senders = [
        threading.Thread(
            target=lambda t=t: [
                _send_until_acknowledged(
                    url, f"c{t}-{i}", {**body, "chosen": f"hello {t} {i}"}, headers, acknowledged
                )
                for i in range(40)
            ]
        )
        for t in range(4)
    ]
    for sender in senders:
        sender.start()
    time.sleep(1.0)
    os.kill(first.process.pid, signal.SIGKILL)
    first.stop()
    second = reference_server(demo_model, data_dir, tmp_path, "second")
    url[0] = second.url
    try:
        for sender in senders:
            sender.join(timeout=120)
    finally:
        second.stop()
    db = Database(sqlite_url(data_dir))
    with db.reading() as session:
        rows = dict(
            session.execute(
                select(Feedback.idempotency_key, func.count()).group_by(Feedback.idempotency_key)
            ).all()
        )
        ids = dict(session.execute(select(Feedback.idempotency_key, Feedback.id)).all())
    db.dispose()
    assert len(acknowledged) == 160
    assert rows == {key: 1 for key in acknowledged}  # every acknowledged row, exactly once
    assert all(ids[key] == row_id for key, row_id in acknowledged.items())


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_trainer_beside_the_server_stops_with_it(demo_model, tmp_path, stop_signal):
    server = start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS, "--with-trainer"],
        tmp_path / "server.log",
        tmp_path / "data",
    )
    trainer = None
    try:
        server.wait_ready()
        (trainer,) = _children(server.process.pid)
        # Only the server hears the signal, as from a supervisor (not its process group).
        os.kill(server.process.pid, stop_signal)
        server.process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _running(trainer) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(trainer), f"the trainer outlived the server:\n{server.log()}"
    finally:
        server.stop()
        if trainer is not None and _running(trainer):
            os.kill(trainer, signal.SIGKILL)
