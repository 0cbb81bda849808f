"""`loraloop trainer` (also `python -m loraloop.trainer`): the sidecar, from its options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

# Where `loraloop serve` and the trainer find (or build) the demo model when no model is named.
DEFAULT_DEMO_MODEL = Path(".loraloop/demo-model")


def demo_model_unless_given(overrides: dict) -> dict:
    """Settings overrides with the demo model as the model when none was named, on the command
    line or in LORALOOP_MODEL; the model is built on first use."""
    if "model" in overrides or "LORALOOP_MODEL" in os.environ:
        return overrides
    if not DEFAULT_DEMO_MODEL.exists():
        from .demo_model import build_demo_model  # torch and transformers: only when needed

        typer.echo(f"building the demo model in {DEFAULT_DEMO_MODEL} ...", err=True)
        build_demo_model(DEFAULT_DEMO_MODEL)
    return {**overrides, "model": str(DEFAULT_DEMO_MODEL)}


def trainer(
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model the servers serve (default: the demo model, as for serve)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The servers' data directory: registry (SQLite) and adapter weights."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="The servers' PostgreSQL registry, if they use one.")
    ] = None,
    poll_s: Annotated[float | None, typer.Option(help="Seconds between looks for work.")] = None,
    lease_s: Annotated[
        float | None,
        typer.Option(help="Seconds before a silent run's feedback is handed to another run."),
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(
            help="A server of the registry's, for policies that sample the live version "
            "(LORALOOP_ADMIN_KEY is its credential)."
        ),
    ] = None,
    transfer_target: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=MODEL: a base model adapters may be carried to, by that name (repeatable; "
            "also LORALOOP_TRANSFER_TARGETS, pairs separated by commas)."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="auto, cuda or cpu: where the trainer loads the base and trains (default auto: "
            "CUDA when there is a GPU; LORALOOP_TRAINER_DEVICE)."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="auto, bfloat16, float16 or float32: the base's weights (default auto: bfloat16 "
            "on a GPU, float32 on the CPU; LORALOOP_TRAINER_DTYPE)."
        ),
    ] = None,
    memory_limit_bytes: Annotated[
        int | None,
        typer.Option(
            help="Memory a run may use on the device, weights included (default: what is free; "
            "LORALOOP_TRAINER_MEMORY_LIMIT_BYTES)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option(help="Do at most one run, then exit.")] = False,
) -> None:
    """Run the trainer sidecar: pending feedback becomes new, gated adapter versions."""
    from loraloop.adapters.logs import configure_logging

    from .main import run_trainer
    from .settings import TrainerSettings

    options = dict(
        model=model,
        data_dir=data_dir,
        database_url=database_url,
        trainer_poll_s=poll_s,
        trainer_lease_s=lease_s,
        server_url=server_url,
        transfer_targets=transfer_target or None,
        trainer_device=device,
        trainer_dtype=dtype,
        trainer_memory_limit_bytes=memory_limit_bytes,
    )
    overrides = {name: value for name, value in options.items() if value is not None}
    configure_logging(os.environ.get("LORALOOP_LOG_FORMAT", "text"))
    run_trainer(TrainerSettings(**demo_model_unless_given(overrides)), once=once)


def main() -> None:
    typer.run(trainer)
