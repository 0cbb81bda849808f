"""`loraloop adapters policy|train|runs`: an adapter's training policy and its trainer runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from loraloop.adapters.search_trials import SearchTrial, search_trials_from_tags

from .client import AdminClient
from .output import emit, print_table, when
from .session import AdapterArg, session_of

app = typer.Typer()
policy_app = typer.Typer(help="How and when the trainer improves an adapter.", no_args_is_help=True)


def _policy_lines(policy: dict) -> None:
    typer.echo(json.dumps(policy, indent=2))


def _setting(text: str) -> tuple[list[str], Any]:
    """`gate.min_accuracy=0.7` -> (["gate", "min_accuracy"], 0.7): values are JSON, or text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"'{text}' is not NAME=VALUE", param_hint="SETTING")

    def not_finite(constant: str):  # JSON has no Infinity or NaN; a policy takes neither
        raise typer.BadParameter(
            f"'{text}': {constant} is not a value a policy takes; give a finite number",
            param_hint="SETTING",
        )

    try:
        parsed = json.loads(value, parse_constant=not_finite)
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
def set_policy(
    ctx: typer.Context,
    adapter: AdapterArg,
    settings: Annotated[
        list[str],
        typer.Argument(
            metavar="SETTING...",
            help="NAME=VALUE, e.g. min_pairs=16 record_completions=true gate.min_accuracy=0.7",
        ),
    ],
) -> None:
    """Change some policy settings; the others keep their current values."""
    changes = [_setting(setting) for setting in settings]  # a typo fails before any call
    session = session_of(ctx)
    with session.client() as client:
        policy = client.policy(adapter)
        for path, value in changes:
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
    print_table(
        (
            "run",
            "status",
            "from",
            "candidate",
            "pairs",
            "accuracy",
            "started",
            "finished",
            "reason",
        ),
        (
            (
                r["id"],
                r["status"],
                r["parent_version"],
                r["candidate_version"],
                r["pairs"],
                r["metrics"].get("heldout_accuracy"),
                when(r["started_at"]),
                when(r["finished_at"]),
                r["reason"],
            )
            for r in runs
        ),
    )


def _searches(client: AdminClient, adapter: str, runs: list[dict]) -> dict[int, list[SearchTrial]]:
    """Run id -> the trial table of each run that searched, from its version's tags (an
    `identical` run's version holds another run's table, so it has none to show)."""
    tables = {}
    for run in runs:
        if "search_trials" in run["metrics"] and run["candidate_version"] is not None:
            tags = client.show_version(adapter, run["candidate_version"])["tags"]
            if tags.get("run") == str(run["id"]):
                tables[run["id"]] = search_trials_from_tags(tags)
    return tables


def _trials_table(run: dict, trials: list[SearchTrial]) -> None:
    metrics = run["metrics"]
    typer.echo(
        f"run {run['id']}: {len(trials)} trials on "
        f"{metrics['search_validation_pairs']:.0f} validation pairs; trial "
        f"{metrics['search_best_trial']:.0f} went to the gate"
    )
    print_table(
        (
            "trial",
            "state",
            "beta",
            "learning rate",
            "epochs",
            "rank",
            "targets",
            "val accuracy",
            "val margin",
            "kl base",
            "kl live",
            "seconds",
        ),
        (
            (
                t.number,
                t.state,
                t.beta,
                t.learning_rate,
                t.epochs,
                t.rank or "parent's",
                ",".join(t.target_modules) if t.target_modules else "parent's",
                t.validation_accuracy,
                t.validation_margin,
                t.kl_from_base,
                t.kl_from_live,
                t.seconds,
            )
            for t in trials
        ),
    )


def _runs_and_trials(runs: list[dict], searches: dict[int, list[SearchTrial]]) -> None:
    _runs_table(runs)
    for run in runs:
        if run["id"] in searches:
            _trials_table(run, searches[run["id"]])


@app.command("runs")
def runs(
    ctx: typer.Context,
    adapter: AdapterArg,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
) -> None:
    """The adapter's training runs, newest first, with their outcome and metrics, and the
    trial table of each run that searched hyperparameters."""
    session = session_of(ctx)
    with session.client() as client:
        found = client.runs(adapter, limit)
        # --json gives the runs as the API does; their versions' tags hold the tables.
        searches = {} if session.as_json else _searches(client, adapter, found)
    emit(found, session.as_json, lambda r: _runs_and_trials(r, searches))


app.add_typer(policy_app, name="policy")
