"""`loraloop adapters register`: a new version, uploaded from a directory here or named on
the server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loraloop.adapters.names import CONFIG_FILE, WEIGHTS_FILE

from .output import emit, note, size
from .session import AdapterArg, ReasonOpt, session_of

app = typer.Typer()


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """`--tag run=x --tag data=v2` as {"run": "x", "data": "v2"}."""
    pairs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not (key and sep):
            raise typer.BadParameter(f"'{item}' is not KEY=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


def _metrics(items: list[str] | None) -> dict[str, float]:
    metrics = {}
    for key, value in _pairs(items, "--metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"the value of '{key}' is not a number: '{value}'", param_hint="--metric"
            ) from None
    return metrics


def _upload_files(directory: Path) -> list[Path]:
    files = [directory / name for name in (CONFIG_FILE, WEIGHTS_FILE)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise typer.BadParameter(
            f"{directory} has no {' or '.join(missing)}; an adapter directory (as PEFT's "
            f"save_pretrained writes it) has both {CONFIG_FILE} and {WEIGHTS_FILE}.",
            param_hint="DIR",
        )
    return files


def _announce(adapter: str, url: str, directory: Path | None, server_path: str | None) -> None:
    if directory is None:
        note(f"registering {server_path} (on the server) as a version of {adapter} at {url} ...")
        return
    files = _upload_files(directory)
    total = sum(f.stat().st_size for f in files)
    note(
        f"uploading {len(files)} files ({size(total)}) from {directory} to {url} "
        f"as a version of {adapter} ..."
    )


def _registered(adapter: str, version: dict, created: bool) -> str:
    if created:
        return f"registered {adapter} version {version['version']}"
    return f"{adapter}: these files are already registered as version {version['version']}"


@app.command("register")
def register(
    ctx: typer.Context,
    adapter: AdapterArg,
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIR",
            exists=True,
            file_okay=False,
            show_default=False,
            help="An adapter directory here; its config and weights are uploaded.",
        ),
    ] = None,
    server_path: Annotated[
        str | None,
        typer.Option(help="Register a directory on the server instead (under an allowed root)."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Where it came from, e.g. a training run (default: upload or path)."),
    ] = None,
    parent: Annotated[
        int | None, typer.Option(min=1, help="The version it was trained from.")
    ] = None,
    reason: ReasonOpt = None,
    base_override_reason: Annotated[
        str | None,
        typer.Option(help="Accept an adapter made for a different base model name, recording why."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=NUMBER", help="An evaluation result (repeatable)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(metavar="KEY=VALUE", help="A label (repeatable).")
    ] = None,
) -> None:
    """Register a new version from DIR (uploaded) or --server-path.

    The same files again give back the version they already are. New versions are
    candidates: promote one to serve it."""
    if (directory is None) == (server_path is None):
        raise typer.BadParameter("give either DIR or --server-path", param_hint="DIR")
    fields = dict(
        source=source,
        parent_version=parent,
        reason=reason,
        base_model_override_reason=base_override_reason,
        metrics=_metrics(metric),
        tags=_pairs(tag, "--tag"),
    )
    session = session_of(ctx)
    _announce(adapter, session.url, directory, server_path)
    with session.client() as client:
        version, created = client.register(adapter, directory, server_path=server_path, **fields)
    message = _registered(adapter, version, created)
    if session.as_json:  # stdout carries only the JSON; the sentence goes with the progress notes
        note(message)
    emit(version, session.as_json, lambda _: typer.echo(message))
