"""The command line's own help, without a server."""

from __future__ import annotations


def test_cli_help_lists_the_commands():
    from typer.testing import CliRunner

    from loraloop.serve.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo-model", "demo-adapter"):
        assert command in result.output


def test_a_policy_value_that_is_not_finite_is_refused_with_a_message():
    from typer.testing import CliRunner

    from loraloop.serve.cli import app

    # Refused before any call: no server listens at this address.
    result = CliRunner().invoke(
        app,
        [
            "adapters",
            "--url",
            "http://127.0.0.1:9",
            "policy",
            "set",
            "acme/support",
            "min_pairs=8",
            "gate.max_kl_from_live=Infinity",
        ],
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.replace("│", " ").split())  # unwrapped from its box
    assert "Infinity is not a value a policy takes; give a finite number" in message


def test_shared_admin_options_go_after_the_group_or_after_the_command():
    from typer.testing import CliRunner

    from loraloop.serve.cli import app

    unreachable = "http://127.0.0.1:9"  # nothing listens: the command gets as far as calling
    for args in (
        ["adapters", "--json", "--url", unreachable, "list"],
        ["adapters", "list", "--json", "--url", unreachable],
        ["adapters", "list", f"--url={unreachable}", "--actor", "ops", "--json"],
        ["adapters", "canary", "set", "acme/support", "2", "--percent", "10", "--url", unreachable],
        ["tenants", "list", "--admin-key", "k", "--url", unreachable],
    ):
        result = CliRunner().invoke(app, args)
        message = " ".join(result.output.replace("│", " ").split())
        assert f"cannot reach the loraloop server at {unreachable}" in message, (args, message)
        assert result.exit_code == 2
