"""The `loraloop` command line: every command group, wired in one place."""

from __future__ import annotations

import typer

from loraloop.trainer.cli import trainer

from . import adapters, demo, registering, tenants, training, transfers
from .serving import serve
from .session import AdminGroup, admin_options

app = typer.Typer(
    help="loraloop: one frozen base model, many tenants' LoRA adapters, chosen per request, "
    "served through an OpenAI-compatible API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# The admin groups: their shared options (admin_options) come before or after the command.
tenants_app = typer.Typer(
    help="Tenants and their API keys.", no_args_is_help=True, callback=admin_options, cls=AdminGroup
)
tenants_app.add_typer(tenants.app)
adapters_app = typer.Typer(
    help="Adapters, their versions, and which version serves.",
    no_args_is_help=True,
    callback=admin_options,
    cls=AdminGroup,
)
for commands in (adapters.app, registering.app, training.app, transfers.app):
    adapters_app.add_typer(commands)
base_app = typer.Typer(
    help="The base model: carry every adapter to a new one.",
    no_args_is_help=True,
    callback=admin_options,
    cls=AdminGroup,
)
base_app.add_typer(transfers.base_app)

app.command()(serve)
app.command()(trainer)
app.add_typer(tenants_app, name="tenants")
app.add_typer(adapters_app, name="adapters")
app.add_typer(base_app, name="base")
app.add_typer(demo.app)
