"""`loraloop serve`: the server, and with `--with-trainer` the trainer sidecar beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer

from loraloop.adapters.logs import configure_logging
from loraloop.trainer.cli import DEFAULT_DEMO_MODEL, demo_model_unless_given

# Caps a request's line and headers: a client cannot make the server buffer unbounded
# header data.
HEADER_LIMIT_BYTES = 64 << 10
TRAINER_STOP_S = 30
ENGINE_LOST_EXIT_STATUS = 4
STARTUP_FAILURE_STATUS = 3  # uvicorn's own status for a server that could not start


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="Base model: a local directory or a hub id. Without it (and without "
            "LORALOOP_MODEL) the demo model is built in .loraloop/demo-model and served."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="vllm (default) or reference (transformers + PEFT, for comparison only)."
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="Name clients use for the base model (default: the model's name)."),
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length.")] = None,
    max_loras: Annotated[int | None, typer.Option(help="Adapters resident at once.")] = None,
    max_cpu_loras: Annotated[
        int | None, typer.Option(help="Adapters cached in host memory.")
    ] = None,
    max_lora_rank: Annotated[int | None, typer.Option(help="Largest adapter rank.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16.")] = None,
    enforce_eager: Annotated[
        bool | None, typer.Option(help="Skip graph capture: faster start, slower decoding.")
    ] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV cache size (CPU).")] = None,
    tool_call_parser: Annotated[
        str | None,
        typer.Option(
            help="The base model's tool-call format, by vLLM's parser name (the demo model's: "
            "hermes). Without one, requests with tools are refused."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Registry database (SQLite) and adapter weights (default .loraloop)."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Registry on PostgreSQL: postgresql+psycopg://user@host/db.")
    ] = None,
    allowed_adapter_root: Annotated[
        list[Path] | None,
        typer.Option(help="A server directory versions may be registered from (repeatable)."),
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require API keys (default). --no-auth only on 127.0.0.1; "
            "the admin credential comes from LORALOOP_ADMIN_KEY.",
        ),
    ] = None,
    exit_on_engine_loss: Annotated[
        bool | None,
        typer.Option(
            help="Exit with status 4 once the engine is lost, for systemd or a container runtime "
            "to restart (in Kubernetes the /health probe does it)."
        ),
    ] = None,
    with_trainer: Annotated[
        bool,
        typer.Option(
            help="Also run the trainer sidecar as a child process on the same registry (one "
            "machine; in Kubernetes it is a container of its own)."
        ),
    ] = False,
) -> None:
    """Start the server. Every option can also be set as LORALOOP_<OPTION> in the environment."""
    import uvicorn

    from ..app import create_app
    from ..connections import RequestHeadDeadline
    from ..settings import ServeSettings

    options = dict(
        model=model,
        host=host,
        port=port,
        engine=engine,
        served_model_name=served_model_name,
        max_model_len=max_model_len,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        max_lora_rank=max_lora_rank,
        dtype=dtype,
        enforce_eager=enforce_eager,
        kv_cache_gib=kv_cache_gib,
        tool_call_parser=tool_call_parser,
        exit_on_engine_loss=exit_on_engine_loss,
        data_dir=data_dir,
        database_url=database_url,
        allowed_adapter_roots=allowed_adapter_root or None,
        auth=auth,
    )
    # Only what was given on the command line; the rest comes from LORALOOP_* or defaults.
    overrides = {name: value for name, value in options.items() if value is not None}
    settings = ServeSettings(**_demo_tool_format(demo_model_unless_given(overrides)))
    configure_logging(settings.log_format)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            log_config=None,
            timeout_graceful_shutdown=30,
            h11_max_incomplete_event_size=HEADER_LIMIT_BYTES,
            http=RequestHeadDeadline,
        )
    )
    state = app.state.loraloop
    if settings.exit_on_engine_loss:
        state.on_engine_lost = lambda: setattr(server, "should_exit", True)
    with trainer_beside(settings) if with_trainer else nullcontext():
        server.run()
    if state.engine_lost() and settings.exit_on_engine_loss:
        raise typer.Exit(ENGINE_LOST_EXIT_STATUS)
    if not server.started:  # as uvicorn.run does: a server that never listened failed
        raise typer.Exit(STARTUP_FAILURE_STATUS)


def _demo_tool_format(overrides: dict) -> dict:
    # The demo model writes tool calls in the Hermes format: serve it with that parser
    # unless the operator chose otherwise.
    if (
        overrides.get("model") != str(DEFAULT_DEMO_MODEL)
        or "tool_call_parser" in overrides
        or "LORALOOP_TOOL_CALL_PARSER" in os.environ
    ):
        return overrides
    return {**overrides, "tool_call_parser": "hermes"}


@contextmanager
def trainer_beside(settings) -> Iterator[subprocess.Popen]:
    """The trainer sidecar as a child process that ends with the server, however it ends.

    uvicorn drains on SIGTERM, then raises the signal again on itself; with the default
    handler that kills the process before any cleanup runs and orphans the child. Turning it
    into an exception lets the `finally` below stop the trainer, which finishes the run in
    progress if that is quick enough.
    """
    child = _start_trainer(settings)
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield child
    finally:
        signal.signal(signal.SIGTERM, previous)
        child.terminate()
        try:
            child.wait(timeout=TRAINER_STOP_S)
        except subprocess.TimeoutExpired:
            child.kill()  # its lease lapses and the next trainer takes the feedback


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)  # the shell's convention for "ended by this signal"


def _start_trainer(settings) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "loraloop.trainer",
        "--model",
        settings.model,
        "--data-dir",
        str(settings.data_dir),
    ]
    env = dict(os.environ)
    if settings.database_url:  # through the environment: a URL may hold a password
        env["LORALOOP_DATABASE_URL"] = settings.database_url
    # On-policy sampling asks this server (the admin key, if any, is in the environment).
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    env.setdefault("LORALOOP_SERVER_URL", f"http://{host}:{settings.port}")
    return subprocess.Popen(command, env=env)
