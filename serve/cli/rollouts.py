"""`loraloop adapters rollout status|start|pause|resume|abort`: a version earning its traffic."""

from __future__ import annotations

import typer

from .output import emit, when
from .session import AdapterArg, ReasonOpt, VersionArg, session_of

app = typer.Typer(
    help="A new version earning its traffic step by step: shadow, canary "
    "steps, live, a watch window.",
    no_args_is_help=True,
)


def _status(rollout: dict) -> None:
    stages = rollout["stages"]
    marked = " > ".join(
        f"[{s}]" if i == rollout["step"] and rollout["status"] in ("active", "paused") else s
        for i, s in enumerate(stages)
    )
    typer.echo(
        f"{rollout['adapter']}: rollout {rollout['id']} of version "
        f"{rollout['candidate_version']} against version {rollout['baseline_version']}"
        f" - {rollout['status']}, {rollout['stage']}"
    )
    typer.echo(f"plan: {marked}; step since {when(rollout['step_started_at'])}")
    typer.echo(
        f"started {when(rollout['created_at'])} by {rollout['created_by']}"
        + (f"; ended {when(rollout['finished_at'])}" if rollout["finished_at"] else "")
        + (f"; driven by {rollout['driver']}" if rollout["driver"] else "")
    )
    if rollout["reason"]:
        typer.echo(f"reason: {rollout['reason']}")
    decision = rollout["decision"]
    if not decision:
        typer.echo("no decision yet")
        return
    typer.echo(
        f"last decision ({when(decision['at'])}, {decision['stage']}): "
        f"{decision['action']}" + (f" ({decision['cause']})" if decision["cause"] else "")
    )
    rate = decision["win_rate"]
    typer.echo(
        f"  comparisons: {decision['wins']} won, {decision['losses']} lost, {decision['ties']} "
        f"tied, {decision['abstained']} abstained, {decision['unjudged']} not yet judged; win "
        f"rate {'-' if rate is None else f'{rate:.2f}'} "
        f"({decision['win_rate_low']:.2f}-{decision['win_rate_high']:.2f})"
    )
    typer.echo(
        f"  sequential test: log LR better {decision['log_lr_better']:.2f}, worse "
        f"{decision['log_lr_worse']:.2f}, threshold {decision['threshold']:.2f}"
    )
    served = ", ".join(f"version {v}: {n}" for v, n in decision["requests"].items())
    typer.echo(f"  requests this step: {served or 'none'}")
    typer.echo(f"  {decision['reason']}")


@app.command("status")
def status(ctx: typer.Context, adapter: AdapterArg) -> None:
    """The adapter's rollout under way (else its latest): step, last decision, figures."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.rollout(adapter), session.as_json, _status)


@app.command("start")
def start(
    ctx: typer.Context, adapter: AdapterArg, version: VersionArg, reason: ReasonOpt = None
) -> None:
    """Roll VERSION out by the adapter's policy's plan (its judge compares the answers)."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.start_rollout(adapter, version, reason), session.as_json, _status)


def _change(action: str, doc: str):
    def command(ctx: typer.Context, adapter: AdapterArg, reason: ReasonOpt = None) -> None:
        session = session_of(ctx)
        with session.client() as client:
            emit(client.change_rollout(adapter, action, reason), session.as_json, _status)

    command.__doc__ = doc
    app.command(action)(command)


_change("pause", "Stop deciding; the traffic stays as it is until resumed.")
_change("resume", "Decide again; the step's clock starts over.")
_change("abort", "End the rollout: a canary share goes, a version already live stays.")
