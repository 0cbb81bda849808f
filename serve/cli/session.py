"""What every admin command shares: where the server is, who acts, how to print, and a
client whose failures end the command with a message instead of a traceback.

The options belong to the command groups, set once by `admin_options` and found by each
command in its context; they may come after the group or after the command
(`loraloop adapters --json list`, `loraloop adapters list --json`). Exit codes: 0 done, 1 the
server refused, 2 the command line was wrong or the server could not be reached.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

import httpx
import typer
from typer.core import TyperGroup

from loraloop.adapters.names import ADAPTER_ID_HELP, NAME_HELP, is_valid_adapter_id, is_valid_name

from .client import AdminApiError, AdminClient
from .output import note

if TYPE_CHECKING:
    # typer runs its own copy of click and exports no name for that copy's Context.
    from typer._click import Context

DEFAULT_URL = "http://127.0.0.1:8000"
# The server's rule for the actor header: an OS user name outside it is not sent at all,
# rather than making every command fail for that user.
_ACTOR = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True)
class AdminSession:
    url: str
    admin_key: str | None
    actor: str | None
    as_json: bool

    @contextmanager
    def client(self) -> Iterator[AdminClient]:
        try:
            with AdminClient(self.url, self.admin_key, actor=self.actor) as client:
                yield client
        except AdminApiError as exc:
            _refused(exc)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            _unreachable(self.url, exc)


# The shared options, as `admin_options` declares them: flags, and options with a value.
_SHARED_FLAGS = ("--json",)
_SHARED_VALUED = ("--url", "--admin-key", "--actor")


class AdminGroup(TyperGroup):
    """A command group whose shared options may also follow its commands: they are moved
    in front of the command before parsing, where the group's callback reads them."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_shared_options(args))


def hoist_shared_options(args: list[str]) -> list[str]:
    """`args` with the shared options (and their values) first, the rest in order."""
    shared, rest, index = [], [], 0
    while index < len(args):
        arg = args[index]
        name = arg.split("=", 1)[0]
        if arg == "--":  # what follows is arguments, not options
            rest.extend(args[index:])
            break
        if arg in _SHARED_FLAGS or (name in _SHARED_VALUED and "=" in arg):
            shared.append(arg)
        elif arg in _SHARED_VALUED and index + 1 < len(args):
            shared.extend(args[index : index + 2])
            index += 1
        else:
            rest.append(arg)
        index += 1
    return shared + rest


def admin_options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="LORALOOP_URL", help="The loraloop server.")
    ] = DEFAULT_URL,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="LORALOOP_ADMIN_KEY",
            show_default=False,
            help="The admin credential. Prefer setting LORALOOP_ADMIN_KEY: a key typed on the "
            "command line stays in your shell history and shows in `ps` to everyone on the "
            "machine.",
        ),
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option(
            envvar="LORALOOP_ACTOR",
            show_default=False,
            help="Your name in the audit trail (default: your OS user name).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON instead of a table.")
    ] = False,
) -> None:
    """The options of every admin command, given before or after the command."""
    ctx.obj = AdminSession(url, admin_key, actor or _os_user(), as_json)


def session_of(ctx: typer.Context) -> AdminSession:
    session = ctx.find_object(AdminSession)
    if session is None:  # the admin group's callback sets it before any of its commands
        raise RuntimeError("an admin command ran outside the admin command group")
    return session


def _os_user() -> str | None:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry, as in some containers
        return None
    return user if _ACTOR.fullmatch(user) else None


def _refused(exc: AdminApiError) -> NoReturn:
    # A refused adapter's message already joins its problems; one per line reads better.
    note("error: the adapter was refused:" if exc.problems else f"error: {exc.message}")
    for problem in exc.problems:
        note(f"  - {problem}")
    if exc.status in (401, 403):
        note("The admin commands need the admin credential: set LORALOOP_ADMIN_KEY.")
    raise typer.Exit(1)


def _unreachable(url: str, exc: Exception) -> NoReturn:
    note(f"error: cannot reach the loraloop server at {url}: {str(exc) or type(exc).__name__}")
    note(
        f"Check that it is running, and that --url (or LORALOOP_URL) names it, e.g. {DEFAULT_URL}."
    )
    raise typer.Exit(2)


# -- arguments the commands share ----------------------------------------------------------


def _check_tenant(value: str) -> str:
    if not is_valid_name(value):
        raise typer.BadParameter(f"'{value}' is not a tenant name: {NAME_HELP}.")
    return value


def _check_adapter_id(value: str) -> str:
    if not is_valid_adapter_id(value):
        raise typer.BadParameter(f"'{value}': {ADAPTER_ID_HELP}, e.g. acme/support.")
    return value


TenantArg = Annotated[str, typer.Argument(metavar="TENANT", callback=_check_tenant)]
AdapterArg = Annotated[str, typer.Argument(metavar="TENANT/NAME", callback=_check_adapter_id)]
VersionArg = Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The version number.")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why, for the audit trail.")]
