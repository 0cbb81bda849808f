"""The `loraloop` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from . import training_cli  # noqa: F401 - registers `adapters policy|train|runs`
from .admin_cli import adapters_app, tenants_app
from .logs import configure_logging

app = typer.Typer(
    help="loraloop: one frozen base model, many tenants' LoRA adapters, chosen per request, "
    "served through an OpenAI-compatible API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DEFAULT_DEMO_MODEL = Path(".loraloop/demo-model")
HEADER_LIMIT_BYTES = 64 << 10


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(
        help="Base model: a local directory or a hub id. Without it (and without "
        "LORALOOP_MODEL) the demo model is built in .loraloop/demo-model and served.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    engine: Annotated[str | None, typer.Option(
        help="vllm (default) or reference (transformers + PEFT, for comparison only).")] = None,
    served_model_name: Annotated[str | None, typer.Option(
        help="Name clients use for the base model (default: the model's name).")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length.")] = None,
    max_loras: Annotated[int | None, typer.Option(help="Adapters resident at once.")] = None,
    max_cpu_loras: Annotated[int | None, typer.Option(
        help="Adapters cached in host memory.")] = None,
    max_lora_rank: Annotated[int | None, typer.Option(help="Largest adapter rank.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16.")] = None,
    enforce_eager: Annotated[bool | None, typer.Option(
        help="Skip graph capture: faster start, slower decoding.")] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV cache size (CPU).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Registry database (SQLite) and adapter weights (default .loraloop).")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="Registry on PostgreSQL: postgresql+psycopg://user@host/db.")] = None,
    allowed_adapter_root: Annotated[list[Path] | None, typer.Option(
        help="A server directory versions may be registered from (repeatable).")] = None,
    auth: Annotated[bool | None, typer.Option(
        "--auth/--no-auth", help="Require API keys (default). --no-auth only on 127.0.0.1; "
        "the admin credential comes from LORALOOP_ADMIN_KEY.")] = None,
    with_trainer: Annotated[bool, typer.Option(
        help="Also run the trainer sidecar as a child process on the same registry (one "
        "machine; in Kubernetes it is a container of its own).")] = False,
) -> None:
    """Start the server. Every option can also be set as LORALOOP_<OPTION> in the environment."""
    import uvicorn

    from .app import create_app
    from .settings import ServeSettings

    options = dict(
        model=model, host=host, port=port, engine=engine, served_model_name=served_model_name,
        max_model_len=max_model_len, max_loras=max_loras, max_cpu_loras=max_cpu_loras,
        max_lora_rank=max_lora_rank, dtype=dtype, enforce_eager=enforce_eager,
        kv_cache_gib=kv_cache_gib, data_dir=data_dir, database_url=database_url,
        allowed_adapter_roots=allowed_adapter_root or None, auth=auth,
    )
    # Only what was given on the command line; the rest comes from LORALOOP_* or defaults.
    overrides = {name: value for name, value in options.items() if value is not None}
    _default_to_demo_model(overrides)
    settings = ServeSettings(**overrides)
    configure_logging(settings.log_format)
    sidecar = _start_trainer(settings) if with_trainer else None
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level="info", log_config=None, timeout_graceful_shutdown=30,
                    # Caps a request's line and headers: a client cannot make the server
                    # buffer unbounded header data.
                    h11_max_incomplete_event_size=HEADER_LIMIT_BYTES)
    finally:
        if sidecar is not None:
            sidecar.terminate()  # it finishes a run in progress, if that is quick enough
            try:
                sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()  # its lease lapses and the next trainer takes the feedback


def _start_trainer(settings) -> subprocess.Popen:
    command = [sys.executable, "-m", "loraloop.serve.cli", "trainer", "--model", settings.model,
               "--data-dir", str(settings.data_dir)]
    env = dict(os.environ)
    if settings.database_url:  # through the environment: a URL may hold a password
        env["LORALOOP_DATABASE_URL"] = settings.database_url
    return subprocess.Popen(command, env=env)


def _default_to_demo_model(overrides: dict) -> None:
    """No model on the command line or in LORALOOP_MODEL: the demo model, built if missing."""
    if "model" not in overrides and "LORALOOP_MODEL" not in os.environ:
        overrides["model"] = str(_ensure_demo_model(DEFAULT_DEMO_MODEL))


def _ensure_demo_model(path: Path) -> Path:
    if not path.exists():
        from .demo_model import build_demo_model

        typer.echo(f"building the demo model in {path} ...", err=True)
        build_demo_model(path)
    return path


def _configure_logging() -> None:
    configure_logging(os.environ.get("LORALOOP_LOG_FORMAT", "text"))


@app.command()
def trainer(
    model: Annotated[str | None, typer.Option(
        help="The base model the servers serve (default: the demo model, as for serve).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="The servers' data directory: registry (SQLite) and adapter weights.")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="The servers' PostgreSQL registry, if they use one.")] = None,
    poll_s: Annotated[float | None, typer.Option(help="Seconds between looks for work.")] = None,
    lease_s: Annotated[float | None, typer.Option(
        help="Seconds before a silent run's feedback is handed to another run.")] = None,
    once: Annotated[bool, typer.Option(help="Do at most one run, then exit.")] = False,
) -> None:
    """Run the trainer sidecar: pending feedback becomes new, gated adapter versions."""
    from loraloop.trainer.main import run_trainer
    from loraloop.trainer.settings import TrainerSettings

    options = dict(model=model, data_dir=data_dir, database_url=database_url,
                   trainer_poll_s=poll_s, trainer_lease_s=lease_s)
    overrides = {name: value for name, value in options.items() if value is not None}
    _default_to_demo_model(overrides)
    _configure_logging()
    run_trainer(TrainerSettings(**overrides), once=once)


@app.command()
def demo(
    url: Annotated[str, typer.Option(envvar="LORALOOP_URL", help="The running server.")] =
    "http://127.0.0.1:8000",
    admin_key: Annotated[str | None, typer.Option(
        envvar="LORALOOP_ADMIN_KEY", show_default=False,
        help="The admin credential, if the server has auth on.")] = None,
    model: Annotated[Path, typer.Option(
        help="The base model directory the server serves.")] = DEFAULT_DEMO_MODEL,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for training.")] = 600,
) -> None:
    """Show the loop on a running server with its trainer (`make serve`): an adapter, feedback,
    a trained and promoted version with changed answers, a rollback."""
    from .admin_client import AdminApiError
    from .demo import run_demo

    try:
        run_demo(url, admin_key, model, typer.echo, timeout_s=timeout_s)
    except AdminApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot talk to the server at {url}: {exc}. Start it with "
                   "`make serve`.", err=True)
        raise typer.Exit(2) from None


@app.command("demo-model")
def demo_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the model (must not exist).")],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Build the tiny demo model (random weights, trained tokenizer, chat template), offline."""
    from .demo_model import build_demo_model

    build_demo_model(directory, seed=seed)
    typer.echo(f"demo model written to {directory}")


@app.command("demo-adapter")
def demo_adapter(
    directory: Annotated[Path, typer.Argument(help="Where to write the adapter.")],
    model: Annotated[Path, typer.Option(help="The base model directory.")],
    seed: Annotated[int, typer.Option(help="Different seeds give different adapters.")] = 1,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
) -> None:
    """Write a LoRA adapter with random weights for a local base model (safetensors)."""
    from .demo_model import build_random_adapter

    build_random_adapter(model, directory, seed=seed, rank=rank)
    typer.echo(f"adapter written to {directory}")


app.add_typer(tenants_app, name="tenants")
app.add_typer(adapters_app, name="adapters")

if __name__ == "__main__":
    app()
