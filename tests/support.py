"""What the tests share: real servers started and stopped, fresh databases of each backend,
the server's metrics read back, and transformers + PEFT greedy decoding as the oracle."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import httpx
import torch
from peft import PeftModel
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraloop.adapters.db import sqlite_url

# -- server -----------------------------------------------------------------------------

LOG_TAIL_CHARS = 6000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.tenant_keys: dict[str, str] = {}  # filled by whoever provisions tenants
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "loraloop.serve.cli",
            "serve",
            "--port",
            str(self.port),
            *args,
        ]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        self._log = open(log_path, "wb")  # noqa: SIM115 - open as long as the process runs
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 240) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


# -- databases --------------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "LORALOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    name = f"loraloop_test_{uuid.uuid4().hex[:12]}"
    # No pooled connection: one kept across a server restart (the fault tests) would be dead.
    server = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with server.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_URL}: start it, or point "
            "LORALOOP_TEST_POSTGRES_URL at one (`make test` starts the local one)"
        ) from exc
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def local_postgres_cluster() -> str | None:
    """The version of the local PostgreSQL cluster the tests use, when they use one that
    this machine runs (and so can stop); None for a server of the operator's own."""
    url = make_url(POSTGRES_URL)
    if (url.host, url.port or 5432) != ("127.0.0.1", 5432) or not shutil.which("pg_ctlcluster"):
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    return versions[-1] if versions else None


@contextmanager
def postgres_stopped(version: str) -> Iterator[None]:
    """The real PostgreSQL server stopped (fast shutdown: sessions are cut), then started
    again however the block ends, and waited for."""

    def cluster(action: str) -> None:
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                version,
                "main",
                action,
                *(["-m", "fast"] if action == "stop" else []),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    cluster("stop")
    try:
        yield
    finally:
        cluster("start")
        deadline = time.monotonic() + 30
        while True:
            try:
                with create_engine(POSTGRES_URL).connect():
                    break
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield sqlite_url(directory)
    else:
        with fresh_postgres_database() as url:
            yield url


# Tests that wait on a busy machine: LORALOOP_TEST_TIME_SCALE (default 1) multiplies the
# limits of the tests that use `scaled`, for a slow or shared machine.
TIME_SCALE = float(os.environ.get("LORALOOP_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


def wait_while_progressing(condition, progress, stall_s: float, what: str):
    """`condition()`'s first truthy value, polled every 0.2 s for as long as `progress()`
    keeps changing (log lines, lease renewals, rows): AssertionError once it has not changed
    for `stall_s` (scaled), naming `what` was awaited. A busy machine is slower, not stuck."""
    last, changed = progress(), time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        now, seen = time.monotonic(), progress()
        if seen != last:
            last, changed = seen, now
        elif now - changed > scaled(stall_s):
            raise AssertionError(
                f"timed out waiting for {what}: no progress in {scaled(stall_s):.0f} s"
            )
        time.sleep(0.2)


def wait_until(condition, timeout_s: float, what: str):
    """`condition()`'s first truthy value, polled every 0.2 s; AssertionError after
    `timeout_s`, naming `what` was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# -- endpoints that fail -----------------------------------------------------------------


@contextmanager
def hanging_endpoint(hang_s: float) -> Iterator[str]:
    """A real HTTP endpoint that takes `hang_s` over every POST and then answers 500 (a judge
    having a bad day). Yields its OpenAI-style base URL."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(hang_s)

    with _failing_endpoint(answer) as url:
        yield url


@contextmanager
def recording_endpoint() -> Iterator[tuple[str, list[str | None]]]:
    """A real HTTP endpoint that records each POST's Authorization header (None when it has
    none) and answers 500. Yields its OpenAI-style base URL and the list it records in."""
    seen: list[str | None] = []

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        seen.append(handler.headers.get("Authorization"))

    with _failing_endpoint(answer) as url:
        yield url, seen


@contextmanager
def _failing_endpoint(before_answering) -> Iterator[str]:
    """A loopback HTTP server that reads each POST, calls `before_answering` with the
    handler, then answers 500; yields its OpenAI-style base URL."""

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            before_answering(self)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *_) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def read_metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def wait_for_metric(url: str, name: str, expected: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (value := read_metric(url, name)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


# -- oracle -----------------------------------------------------------------------------


@cache
def _tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@cache
def _model(model_dir: Path, adapter_dir: Path | None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval()


def chat_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    encoded = _tokenizer(model_dir).apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])


def text_ids(model_dir: Path, text: str) -> list[int]:
    return _tokenizer(model_dir)(text)["input_ids"]


def greedy_text(
    model_dir: Path, adapter_dir: Path | None, prompt_ids: list[int], max_new_tokens: int
) -> str:
    model = _model(model_dir, adapter_dir)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False
        )
    text = _tokenizer(model_dir).decode(out[0][len(prompt_ids) :], skip_special_tokens=True)
    # An incomplete UTF-8 character at the very end is withheld by the server, by design.
    return text.rstrip("\ufffd")
