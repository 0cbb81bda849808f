"""The operator commands `loraloop tenants ...` and `loraloop adapters ...`.

A thin shell over AdminClient: arguments in, one admin API call, a table (or, with --json,
the API's JSON) out. Results go to stdout; progress, notes and errors go to stderr, so
`--json` output can be piped straight into jq. Exit codes: 0 done, 1 the server refused,
2 the command line was wrong or the server could not be reached.
"""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loraloop.adapters.names import (
    ADAPTER_ID_HELP,
    CONFIG_FILE,
    NAME_HELP,
    WEIGHTS_FILE,
    is_valid_adapter_id,
    is_valid_name,
)

from .admin_client import AdminApiError, AdminClient

DEFAULT_URL = "http://127.0.0.1:8000"
# The server's rule for the actor header: an OS user name outside it is not sent at all,
# rather than making every command fail for that user.
_ACTOR = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# Off a terminal rich would cut tables at 80 columns; piped output (grep, logs) gets room.
PIPE_WIDTH = 200

tenants_app = typer.Typer(help="Tenants and their API keys.", no_args_is_help=True)
keys_app = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapters, their versions, and which version serves.",
                           no_args_is_help=True)
canary_app = typer.Typer(help="Send a share of an adapter's requests to another version.",
                         no_args_is_help=True)
tenants_app.add_typer(keys_app, name="keys")
adapters_app.add_typer(canary_app, name="canary")


# -- arguments and options shared by the commands ------------------------------------------

def _check_tenant(value: str) -> str:
    if not is_valid_name(value):
        raise typer.BadParameter(f"'{value}' is not a tenant name: {NAME_HELP}.")
    return value


def _check_adapter_id(value: str) -> str:
    if not is_valid_adapter_id(value):
        raise typer.BadParameter(f"'{value}': {ADAPTER_ID_HELP}, e.g. acme/support.")
    return value


Url = Annotated[str, typer.Option(envvar="LORALOOP_URL", help="The loraloop server.")]
AdminKey = Annotated[str | None, typer.Option(
    envvar="LORALOOP_ADMIN_KEY", show_default=False,
    help="The admin credential. Prefer setting LORALOOP_ADMIN_KEY: a key typed on the command "
    "line stays in your shell history and shows in `ps` to everyone on the machine.")]
Actor = Annotated[str | None, typer.Option(
    envvar="LORALOOP_ACTOR", show_default=False,
    help="Your name in the audit trail (default: your OS user name).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
TenantArg = Annotated[str, typer.Argument(metavar="TENANT", callback=_check_tenant)]
AdapterArg = Annotated[str, typer.Argument(metavar="TENANT/NAME", callback=_check_adapter_id)]
VersionArg = Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The version number.")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why, for the audit trail.")]


def _os_user() -> str | None:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry, as in some containers
        return None
    return user if _ACTOR.fullmatch(user) else None


# -- talking to the server -----------------------------------------------------------------

@contextmanager
def _client(url: str, admin_key: str | None, actor: str | None) -> Iterator[AdminClient]:
    """An AdminClient whose failures end the command with a message, never a traceback."""
    try:
        with AdminClient(url, admin_key, actor=actor or _os_user()) as client:
            yield client
    except AdminApiError as exc:
        _refused(exc)
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        _unreachable(url, exc)


def _refused(exc: AdminApiError) -> NoReturn:
    # A refused adapter's message already joins its problems; one per line reads better.
    _note("error: the adapter was refused:" if exc.problems else f"error: {exc.message}")
    for problem in exc.problems:
        _note(f"  - {problem}")
    if exc.status in (401, 403):
        _note("The admin commands need the admin credential: set LORALOOP_ADMIN_KEY.")
    raise typer.Exit(1)


def _unreachable(url: str, exc: Exception) -> NoReturn:
    _note(f"error: cannot reach the loraloop server at {url}: {str(exc) or type(exc).__name__}")
    _note("Check that it is running, and that --url (or LORALOOP_URL) names it, e.g. "
          f"{DEFAULT_URL}.")
    raise typer.Exit(2)


# -- output --------------------------------------------------------------------------------

def _note(message: str) -> None:
    typer.echo(message, err=True)


def _emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render(result)


def _print(renderable: Any) -> None:
    console = Console()
    (console if console.is_terminal else Console(width=PIPE_WIDTH)).print(renderable)


def _cell(value: Any) -> Text:
    # Text, not str: rich would read "[...]" in a reason or description as markup.
    return Text("-" if value is None or value == "" else str(value))


def _table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    table = Table(*columns, box=box.SIMPLE)
    for row in rows:
        table.add_row(*map(_cell, row))
    return table


def _when(iso: str | None) -> str | None:
    # The API sends ISO 8601 times in UTC; to the second is enough in a table.
    return iso[:19].replace("T", " ") if iso else None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _tenants_table(tenants: list[dict]) -> None:
    _print(_table(("tenant", "created", "by"),
                  ((t["name"], _when(t["created_at"]), t["created_by"]) for t in tenants)))


def _keys_table(keys: list[dict]) -> None:
    _print(_table(("prefix", "label", "created", "by", "revoked"), (
        (k["prefix"], k["label"], _when(k["created_at"]), k["created_by"],
         _when(k["revoked_at"])) for k in keys)))


def _canary(adapter: dict) -> str | None:
    version = adapter["canary_version"]
    return f"{version} ({adapter['canary_percent']}%)" if version else None


def _adapters_table(adapters: list[dict]) -> None:
    _print(_table(("adapter", "live", "canary", "latest", "created", "by", "description"), (
        (a["id"], a["live_version"], _canary(a), a["latest_version"], _when(a["created_at"]),
         a["created_by"], a["description"]) for a in adapters)))


def _versions_table(versions: list[dict]) -> None:
    columns = ("version", "status", "rank", "targets", "size", "source", "parent", "created",
               "by", "hash")
    _print(_table(columns, (
        (v["version"], v["status"], v["rank"], ",".join(v["target_modules"]),
         _size(v["size_bytes"]), v["source"], v["parent_version"], _when(v["created_at"]),
         v["created_by"], v["content_hash"][:12]) for v in versions)))


def _history_table(events: list[dict]) -> None:
    _print(_table(("time", "kind", "actor", "from", "to", "reason"), (
        (_when(e["at"]), e["kind"], e["actor"], e["from_version"], e["to_version"], e["reason"])
        for e in events)))


def _show_adapter(shown: dict) -> None:
    adapter = shown["adapter"]
    typer.echo(f"{_summary(adapter)}; latest version {adapter['latest_version'] or 'none'}")
    typer.echo(f"created {_when(adapter['created_at'])} by {adapter['created_by']}: "
               f"{adapter['description'] or 'no description'}")
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


# -- tenants -------------------------------------------------------------------------------

@tenants_app.command("create")
def create_tenant(name: TenantArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
                  actor: Actor = None, as_json: AsJson = False) -> None:
    """Create a tenant: the owner of adapters and API keys."""
    with _client(url, admin_key, actor) as client:
        tenant = client.create_tenant(name)
    _emit(tenant, as_json, lambda t: typer.echo(f"created tenant {t['name']}"))


@tenants_app.command("list")
def list_tenants(url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
                 as_json: AsJson = False) -> None:
    """List the tenants."""
    with _client(url, admin_key, actor) as client:
        _emit(client.list_tenants(), as_json, _tenants_table)


@keys_app.command("create")
def create_key(tenant: TenantArg,
               label: Annotated[str | None, typer.Option(
                   help="What the key is for, e.g. the service that uses it.")] = None,
               url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
               as_json: AsJson = False) -> None:
    """Issue an API key for TENANT. It is printed once: the server keeps only its hash."""
    with _client(url, admin_key, actor) as client:
        issued = client.issue_key(tenant, label)
    # The key alone on stdout, so that KEY=$(loraloop tenants keys create acme) captures it.
    _emit(issued, as_json, lambda k: typer.echo(k["key"]))
    _note(f"Issued key {issued['prefix']}... for tenant {tenant}. "
          "It will not be shown again: store it now.")


@keys_app.command("list")
def list_keys(tenant: TenantArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
              actor: Actor = None, as_json: AsJson = False) -> None:
    """List TENANT's keys by prefix (the keys themselves are never stored)."""
    with _client(url, admin_key, actor) as client:
        _emit(client.list_keys(tenant), as_json, _keys_table)


@keys_app.command("revoke")
def revoke_key(tenant: TenantArg,
               prefix: Annotated[str, typer.Argument(help="The key's prefix, from `keys list`.")],
               reason: ReasonOpt = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
               actor: Actor = None, as_json: AsJson = False) -> None:
    """Revoke one of TENANT's keys; requests with it are refused from then on."""
    with _client(url, admin_key, actor) as client:
        key = client.revoke_key(tenant, prefix, reason)
    _emit(key, as_json, lambda k: typer.echo(f"revoked key {k['prefix']} of tenant {tenant}"))


# -- adapters ------------------------------------------------------------------------------

@adapters_app.command("create")
def create_adapter(adapter: AdapterArg,
                   description: Annotated[str | None, typer.Option(
                       help="What the adapter is for.")] = None,
                   url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
                   as_json: AsJson = False) -> None:
    """Create an adapter (with no versions yet) for an existing tenant."""
    with _client(url, admin_key, actor) as client:
        created = client.create_adapter(adapter, description)
    _emit(created, as_json, lambda a: typer.echo(f"created adapter {a['id']}"))


@adapters_app.command("list")
def list_adapters(tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
                  url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
                  as_json: AsJson = False) -> None:
    """List adapters with their live and canary versions."""
    with _client(url, admin_key, actor) as client:
        _emit(client.list_adapters(tenant), as_json, _adapters_table)


@adapters_app.command("show")
def show_adapter(adapter: AdapterArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
                 actor: Actor = None, as_json: AsJson = False) -> None:
    """Show an adapter and all its versions."""
    with _client(url, admin_key, actor) as client:
        shown = {"adapter": client.show_adapter(adapter),
                 "versions": client.list_versions(adapter)}
    _emit(shown, as_json, _show_adapter)


@adapters_app.command("versions")
def list_versions(adapter: AdapterArg, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
                  actor: Actor = None, as_json: AsJson = False) -> None:
    """List an adapter's versions, oldest first."""
    with _client(url, admin_key, actor) as client:
        _emit(client.list_versions(adapter), as_json, _versions_table)


@adapters_app.command("promote")
def promote(adapter: AdapterArg, version: VersionArg,
            expected_live: Annotated[int | None, typer.Option(
                min=0, help="Promote only if this is still the live version (0: none is "
                "live), so a decision made on stale data fails instead.")] = None,
            reason: ReasonOpt = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
            actor: Actor = None, as_json: AsJson = False) -> None:
    """Make VERSION live: requests that name the adapter without a version get it."""
    with _client(url, admin_key, actor) as client:
        result = client.promote(adapter, version, expected_live=expected_live, reason=reason)
    _emit(result, as_json, _said("promoted"))


@adapters_app.command("rollback")
def rollback(adapter: AdapterArg,
             to: Annotated[int | None, typer.Option(
                 "--to", min=1, help="The version to make live (default: the one live "
                 "before the current one).")] = None,
             reason: ReasonOpt = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
             actor: Actor = None, as_json: AsJson = False) -> None:
    """Make an earlier version live again."""
    with _client(url, admin_key, actor) as client:
        result = client.rollback(adapter, to_version=to, reason=reason)
    _emit(result, as_json, _said("rolled back"))


@canary_app.command("set")
def set_canary(adapter: AdapterArg, version: VersionArg,
               percent: Annotated[int, typer.Option(
                   min=1, max=99, help="The share of requests VERSION serves.")],
               reason: ReasonOpt = None, url: Url = DEFAULT_URL, admin_key: AdminKey = None,
               actor: Actor = None, as_json: AsJson = False) -> None:
    """Serve PERCENT of the adapter's requests with VERSION, the rest with the live one."""
    with _client(url, admin_key, actor) as client:
        result = client.set_canary(adapter, version, percent, reason)
    _emit(result, as_json, _said("canary set on"))


@canary_app.command("clear")
def clear_canary(adapter: AdapterArg, reason: ReasonOpt = None, url: Url = DEFAULT_URL,
                 admin_key: AdminKey = None, actor: Actor = None,
                 as_json: AsJson = False) -> None:
    """Stop the canary: the live version serves every request again."""
    with _client(url, admin_key, actor) as client:
        result = client.clear_canary(adapter, reason)
    _emit(result, as_json, _said("canary cleared on"))


@adapters_app.command("reject")
def reject(adapter: AdapterArg, version: VersionArg, reason: ReasonOpt = None,
           url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
           as_json: AsJson = False) -> None:
    """Mark VERSION bad: it can never be promoted, rolled back to, or used as a canary."""
    with _client(url, admin_key, actor) as client:
        result = client.reject(adapter, version, reason)
    _emit(result, as_json, _version_status)


@adapters_app.command("retire")
def retire(adapter: AdapterArg, version: VersionArg, reason: ReasonOpt = None,
           url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
           as_json: AsJson = False) -> None:
    """Take VERSION out of use; unlike a rejected one, it can be promoted again."""
    with _client(url, admin_key, actor) as client:
        result = client.retire(adapter, version, reason)
    _emit(result, as_json, _version_status)


@adapters_app.command("history")
def history(adapter: AdapterArg,
            limit: Annotated[int, typer.Option(min=1, max=1000,
                                               help="The newest this many events.")] = 100,
            url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
            as_json: AsJson = False) -> None:
    """The adapter's audit trail, oldest first: who changed what, when and why."""
    with _client(url, admin_key, actor) as client:
        _emit(client.history(adapter, limit), as_json, _history_table)


# -- registering versions ------------------------------------------------------------------

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
            raise typer.BadParameter(f"the value of '{key}' is not a number: '{value}'",
                                     param_hint="--metric") from None
    return metrics


def _upload_files(directory: Path) -> list[Path]:
    files = [directory / name for name in (CONFIG_FILE, WEIGHTS_FILE)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise typer.BadParameter(
            f"{directory} has no {' or '.join(missing)}; an adapter directory (as PEFT's "
            f"save_pretrained writes it) has both {CONFIG_FILE} and {WEIGHTS_FILE}.",
            param_hint="DIR")
    return files


def _announce(adapter: str, url: str, directory: Path | None, server_path: str | None) -> None:
    if directory is None:
        _note(f"registering {server_path} (on the server) as a version of {adapter} at {url} ...")
        return
    files = _upload_files(directory)
    total = sum(f.stat().st_size for f in files)
    _note(f"uploading {len(files)} files ({_size(total)}) from {directory} to {url} "
          f"as a version of {adapter} ...")


def _registered(adapter: str, version: dict, created: bool) -> str:
    if created:
        return f"registered {adapter} version {version['version']}"
    return f"{adapter}: these files are already registered as version {version['version']}"


@adapters_app.command("register")
def register(
    adapter: AdapterArg,
    directory: Annotated[Path | None, typer.Argument(
        metavar="DIR", exists=True, file_okay=False, show_default=False,
        help="An adapter directory here; its config and weights are uploaded.")] = None,
    server_path: Annotated[str | None, typer.Option(
        help="Register a directory on the server instead (under an allowed root).")] = None,
    source: Annotated[str | None, typer.Option(
        help="Where it came from, e.g. a training run (default: upload or path).")] = None,
    parent: Annotated[int | None, typer.Option(
        min=1, help="The version it was trained from.")] = None,
    reason: ReasonOpt = None,
    base_override_reason: Annotated[str | None, typer.Option(
        help="Accept an adapter made for a different base model name, recording why.")] = None,
    metric: Annotated[list[str] | None, typer.Option(
        metavar="KEY=NUMBER", help="An evaluation result (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help="A label (repeatable).")] = None,
    url: Url = DEFAULT_URL, admin_key: AdminKey = None, actor: Actor = None,
    as_json: AsJson = False,
) -> None:
    """Register a new version from DIR (uploaded) or --server-path.

    The same files again give back the version they already are. New versions are
    candidates: promote one to serve it."""
    if (directory is None) == (server_path is None):
        raise typer.BadParameter("give either DIR or --server-path", param_hint="DIR")
    fields = dict(source=source, parent_version=parent, reason=reason,
                  base_model_override_reason=base_override_reason,
                  metrics=_metrics(metric), tags=_pairs(tag, "--tag"))
    _announce(adapter, url, directory, server_path)
    with _client(url, admin_key, actor) as client:
        version, created = client.register(adapter, directory, server_path=server_path,
                                           **fields)
    message = _registered(adapter, version, created)
    if as_json:  # stdout carries only the JSON; the sentence goes with the progress notes
        _note(message)
    _emit(version, as_json, lambda _: typer.echo(message))
