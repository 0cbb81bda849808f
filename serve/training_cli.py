"""`loraloop adapters policy|train|runs`: an adapter's training policy and its trainer runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .admin_cli import (
    DEFAULT_URL,
    Actor,
    AdapterArg,
    AdminKey,
    AsJson,
    Url,
    _client,
    _emit,
    _print,
    _table,
    _when,
    adapters_app,
)

policy_app = typer.Typer(help="How and when the trainer improves an adapter.",
                         no_args_is_help=True)
adapters_app.add_typer(policy_app, name="policy")


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
def show_policy(adapter: AdapterArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
                actor: Actor = None, as_json: AsJson = False) -> None:
    """Print the adapter's training policy (defaults filled in)."""
    with _client(url, admin_key, actor) as client:
        _emit(client.policy(adapter), as_json, _policy_lines)


@policy_app.command("set")
def set_policy(adapter: AdapterArg,
               settings: Annotated[list[str], typer.Argument(
                   metavar="SETTING...", help="NAME=VALUE, e.g. min_pairs=16 "
                   "record_completions=true gate.min_accuracy=0.7")],
               url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
               as_json: AsJson = False) -> None:
    """Change some policy settings; the others keep their current values."""
    with _client(url, admin_key, actor) as client:
        policy = client.policy(adapter)
        for path, value in map(_setting, settings):
            target = policy
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        _emit(client.set_policy(adapter, policy), as_json, _policy_lines)


@adapters_app.command("train")
def train(adapter: AdapterArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
          actor: Actor = None, as_json: AsJson = False) -> None:
    """Ask the trainer for a run now, whatever the policy's thresholds."""
    with _client(url, admin_key, actor) as client:
        run = client.queue_run(adapter)
    _emit(run, as_json, lambda r: typer.echo(f"queued training run {r['id']} for {adapter}"))


def _runs_table(runs: list[dict]) -> None:
    _print(_table(("run", "status", "from", "candidate", "pairs", "accuracy", "started",
                   "finished", "reason"), (
        (r["id"], r["status"], r["parent_version"], r["candidate_version"], r["pairs"],
         r["metrics"].get("heldout_accuracy"), _when(r["started_at"]), _when(r["finished_at"]),
         r["reason"]) for r in runs)))


@adapters_app.command("runs")
def runs(adapter: AdapterArg, limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
         url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
         as_json: AsJson = False) -> None:
    """The adapter's training runs, newest first, with their outcome and metrics."""
    with _client(url, admin_key, actor) as client:
        _emit(client.runs(adapter, limit), as_json, _runs_table)
