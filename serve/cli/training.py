"""`loraloop adapters policy|train|runs`: an adapter's training policy and its trainer runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .output import emit, print_table, when
from .session import AdapterArg, session_of

app = typer.Typer()
policy_app = typer.Typer(help="How and when the trainer improves an adapter.",
                         no_args_is_help=True)


def _policy_lines(policy: dict) -> None:
    typer.echo(json.dumps(policy, indent=2))


def _setting(text: str) -> tuple[list[str], Any]:
    """`gate.min_accuracy=0.7` -> (["gate", "min_accuracy"], 0.7): values are JSON, or text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"'{text}' is not NAME=VALUE", param_hint="SETTING")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name.split("."), parsed


@policy_app.command("show")
def show_policy(ctx: typer.Context, adapter: AdapterArg) -> None:
    """Print the adapter's training policy (defaults filled in)."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.policy(adapter), session.as_json, _policy_lines)


@policy_app.command("set")
def set_policy(ctx: typer.Context, adapter: AdapterArg,
               settings: Annotated[list[str], typer.Argument(
                   metavar="SETTING...", help="NAME=VALUE, e.g. min_pairs=16 "
                   "record_completions=true gate.min_accuracy=0.7")]) -> None:
    """Change some policy settings; the others keep their current values."""
    session = session_of(ctx)
    with session.client() as client:
        policy = client.policy(adapter)
        for path, value in map(_setting, settings):
            target = policy
            for part in path[:-1]:
                if not isinstance(target.get(part), dict):  # unset (null) so far: start one
                    target[part] = {}
                target = target[part]
            target[path[-1]] = value
        emit(client.set_policy(adapter, policy), session.as_json, _policy_lines)


@app.command("train")
def train(ctx: typer.Context, adapter: AdapterArg) -> None:
    """Ask the trainer for a run now, whatever the policy's thresholds."""
    session = session_of(ctx)
    with session.client() as client:
        run = client.queue_run(adapter)
    emit(run, session.as_json, lambda r: typer.echo(f"queued training run {r['id']} for {adapter}"))


def _runs_table(runs: list[dict]) -> None:
    print_table(("run", "status", "from", "candidate", "pairs", "accuracy", "started",
                 "finished", "reason"), (
        (r["id"], r["status"], r["parent_version"], r["candidate_version"], r["pairs"],
         r["metrics"].get("heldout_accuracy"), when(r["started_at"]), when(r["finished_at"]),
         r["reason"]) for r in runs))


@app.command("runs")
def runs(ctx: typer.Context,
         adapter: AdapterArg, limit: Annotated[int, typer.Option(min=1, max=500)] = 20) -> None:
    """The adapter's training runs, newest first, with their outcome and metrics."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.runs(adapter, limit), session.as_json, _runs_table)


app.add_typer(policy_app, name="policy")
