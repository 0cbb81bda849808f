"""How the commands print: results on stdout (a table, or the API's JSON), everything else
on stderr, so that `--json` output can be piped straight into jq."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Off a terminal rich would cut tables at 80 columns; piped output (grep, logs) gets room.
PIPE_WIDTH = 200


def note(message: str) -> None:
    typer.echo(message, err=True)


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render(result)


def print_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(*columns, box=box.SIMPLE)
    for row in rows:
        table.add_row(*map(_cell, row))
    console = Console()
    (console if console.is_terminal else Console(width=PIPE_WIDTH)).print(table)


def _cell(value: Any) -> Text:
    # Text, not str: rich would read "[...]" in a reason or description as markup.
    return Text("-" if value is None or value == "" else str(value))


def when(iso: str | None) -> str | None:
    # The API sends ISO 8601 times in UTC; to the second is enough in a table.
    return iso[:19].replace("T", " ") if iso else None


def size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
