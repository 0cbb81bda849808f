"""`loraloop adapters ...`: adapters, their versions, and which version serves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from . import rollouts
from .output import emit, print_table, size, when
from .session import AdapterArg, ReasonOpt, VersionArg, session_of

app = typer.Typer()
canary_app = typer.Typer(
    help="Send a share of an adapter's requests to another version.", no_args_is_help=True
)


def _canary(adapter: dict) -> str | None:
    version = adapter["canary_version"]
    return f"{version} ({adapter['canary_percent']}%)" if version else None


def _adapters_table(adapters: list[dict]) -> None:
    print_table(
        ("adapter", "live", "canary", "latest", "created", "by", "description"),
        (
            (
                a["id"],
                a["live_version"],
                _canary(a),
                a["latest_version"],
                when(a["created_at"]),
                a["created_by"],
                a["description"],
            )
            for a in adapters
        ),
    )


def _versions_table(versions: list[dict]) -> None:
    columns = (
        "version",
        "status",
        "rank",
        "targets",
        "size",
        "source",
        "parent",
        "created",
        "by",
        "hash",
    )
    print_table(
        columns,
        (
            (
                v["version"],
                v["status"],
                v["rank"],
                ",".join(v["target_modules"]),
                size(v["size_bytes"]),
                v["source"],
                v["parent_version"],
                when(v["created_at"]),
                v["created_by"],
                v["content_hash"][:12],
            )
            for v in versions
        ),
    )


def _history_table(events: list[dict]) -> None:
    print_table(
        ("time", "kind", "actor", "from", "to", "reason"),
        (
            (when(e["at"]), e["kind"], e["actor"], e["from_version"], e["to_version"], e["reason"])
            for e in events
        ),
    )


def _show_adapter(shown: dict) -> None:
    adapter = shown["adapter"]
    typer.echo(f"{_summary(adapter)}; latest version {adapter['latest_version'] or 'none'}")
    typer.echo(
        f"created {when(adapter['created_at'])} by {adapter['created_by']}: "
        f"{adapter['description'] or 'no description'}"
    )
    _versions_table(shown["versions"])


def _summary(adapter: dict) -> str:
    text = f"{adapter['id']}: live version {adapter['live_version'] or 'none'}"
    if adapter["canary_version"]:
        text += f", canary version {adapter['canary_version']} at {adapter['canary_percent']}%"
    return text


def _said(verb: str) -> Callable[[dict], None]:
    """A renderer for commands that change which version serves: the verb, then the state."""
    return lambda adapter: typer.echo(f"{verb} {_summary(adapter)}")


def _version_status(version: dict) -> None:
    typer.echo(f"{version['adapter']} version {version['version']} is {version['status']}")


@app.command("create")
def create_adapter(
    ctx: typer.Context,
    adapter: AdapterArg,
    description: Annotated[str | None, typer.Option(help="What the adapter is for.")] = None,
) -> None:
    """Create an adapter (with no versions yet) for an existing tenant."""
    session = session_of(ctx)
    with session.client() as client:
        created = client.create_adapter(adapter, description)
    emit(created, session.as_json, lambda a: typer.echo(f"created adapter {a['id']}"))


@app.command("list")
def list_adapters(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
) -> None:
    """List adapters with their live and canary versions."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.list_adapters(tenant), session.as_json, _adapters_table)


@app.command("show")
def show_adapter(ctx: typer.Context, adapter: AdapterArg) -> None:
    """Show an adapter and all its versions."""
    session = session_of(ctx)
    with session.client() as client:
        shown = {"adapter": client.show_adapter(adapter), "versions": client.list_versions(adapter)}
    emit(shown, session.as_json, _show_adapter)


@app.command("versions")
def list_versions(ctx: typer.Context, adapter: AdapterArg) -> None:
    """List an adapter's versions, oldest first."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.list_versions(adapter), session.as_json, _versions_table)


@app.command("promote")
def promote(
    ctx: typer.Context,
    adapter: AdapterArg,
    version: VersionArg,
    expected_live: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Promote only if this is still the live version (0: none is "
            "live), so a decision made on stale data fails instead.",
        ),
    ] = None,
    reason: ReasonOpt = None,
) -> None:
    """Make VERSION live: requests that name the adapter without a version get it."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.promote(adapter, version, expected_live=expected_live, reason=reason)
    emit(result, session.as_json, _said("promoted"))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    adapter: AdapterArg,
    to: Annotated[
        int | None,
        typer.Option(
            "--to",
            min=1,
            help="The version to make live (default: the one live before the current one).",
        ),
    ] = None,
    reason: ReasonOpt = None,
) -> None:
    """Make an earlier version live again."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.rollback(adapter, to_version=to, reason=reason)
    emit(result, session.as_json, _said("rolled back"))


@canary_app.command("set")
def set_canary(
    ctx: typer.Context,
    adapter: AdapterArg,
    version: VersionArg,
    percent: Annotated[
        int, typer.Option(min=1, max=99, help="The share of requests VERSION serves.")
    ],
    reason: ReasonOpt = None,
) -> None:
    """Serve PERCENT of the adapter's requests with VERSION, the rest with the live one."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.set_canary(adapter, version, percent, reason)
    emit(result, session.as_json, _said("canary set on"))


@canary_app.command("clear")
def clear_canary(ctx: typer.Context, adapter: AdapterArg, reason: ReasonOpt = None) -> None:
    """Stop the canary: the live version serves every request again."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.clear_canary(adapter, reason)
    emit(result, session.as_json, _said("canary cleared on"))


@app.command("reject")
def reject(
    ctx: typer.Context, adapter: AdapterArg, version: VersionArg, reason: ReasonOpt = None
) -> None:
    """Mark VERSION bad: it can never be promoted, rolled back to, or used as a canary."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.reject(adapter, version, reason)
    emit(result, session.as_json, _version_status)


@app.command("retire")
def retire(
    ctx: typer.Context, adapter: AdapterArg, version: VersionArg, reason: ReasonOpt = None
) -> None:
    """Take VERSION out of use; unlike a rejected one, it can be promoted again."""
    session = session_of(ctx)
    with session.client() as client:
        result = client.retire(adapter, version, reason)
    emit(result, session.as_json, _version_status)


@app.command("history")
def history(
    ctx: typer.Context,
    adapter: AdapterArg,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The newest this many events.")] = 100,
) -> None:
    """The adapter's audit trail, oldest first: who changed what, when and why."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.history(adapter, limit), session.as_json, _history_table)


app.add_typer(canary_app, name="canary")
app.add_typer(rollouts.app, name="rollout")
