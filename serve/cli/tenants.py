"""`loraloop tenants ...`: tenants and their API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from .output import emit, note, print_table, when
from .session import ReasonOpt, TenantArg, session_of

app = typer.Typer()
keys_app = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)


def _tenants_table(tenants: list[dict]) -> None:
    print_table(
        ("tenant", "created", "by"),
        ((t["name"], when(t["created_at"]), t["created_by"]) for t in tenants),
    )


def _keys_table(keys: list[dict]) -> None:
    print_table(
        ("prefix", "label", "created", "by", "revoked"),
        (
            (k["prefix"], k["label"], when(k["created_at"]), k["created_by"], when(k["revoked_at"]))
            for k in keys
        ),
    )


@app.command("create")
def create_tenant(ctx: typer.Context, name: TenantArg) -> None:
    """Create a tenant: the owner of adapters and API keys."""
    session = session_of(ctx)
    with session.client() as client:
        tenant = client.create_tenant(name)
    emit(tenant, session.as_json, lambda t: typer.echo(f"created tenant {t['name']}"))


@app.command("list")
def list_tenants(ctx: typer.Context) -> None:
    """List the tenants."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.list_tenants(), session.as_json, _tenants_table)


@keys_app.command("create")
def create_key(
    ctx: typer.Context,
    tenant: TenantArg,
    label: Annotated[
        str | None, typer.Option(help="What the key is for, e.g. the service that uses it.")
    ] = None,
) -> None:
    """Issue an API key for TENANT. It is printed once: the server keeps only its hash."""
    session = session_of(ctx)
    with session.client() as client:
        issued = client.issue_key(tenant, label)
    # The key alone on stdout, so that KEY=$(loraloop tenants keys create acme) captures it.
    emit(issued, session.as_json, lambda k: typer.echo(k["key"]))
    note(
        f"Issued key {issued['prefix']}... for tenant {tenant}. "
        "It will not be shown again: store it now."
    )


@keys_app.command("list")
def list_keys(ctx: typer.Context, tenant: TenantArg) -> None:
    """List TENANT's keys by prefix (the keys themselves are never stored)."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.list_keys(tenant), session.as_json, _keys_table)


@keys_app.command("revoke")
def revoke_key(
    ctx: typer.Context,
    tenant: TenantArg,
    prefix: Annotated[str, typer.Argument(help="The key's prefix, from `keys list`.")],
    reason: ReasonOpt = None,
) -> None:
    """Revoke one of TENANT's keys; requests with it are refused from then on."""
    session = session_of(ctx)
    with session.client() as client:
        key = client.revoke_key(tenant, prefix, reason)
    emit(
        key, session.as_json, lambda k: typer.echo(f"revoked key {k['prefix']} of tenant {tenant}")
    )


app.add_typer(keys_app, name="keys")
