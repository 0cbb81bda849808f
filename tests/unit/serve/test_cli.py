"""The command line's own help, without a server."""

from __future__ import annotations


def test_cli_help_lists_the_commands():
    from typer.testing import CliRunner

    from loraloop.serve.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo-model", "demo-adapter"):
        assert command in result.output
