"""`make test` lints first: ruff, the format check, mypy and the import contracts; the
pre-commit hooks run the same tools. Nothing else fails when a line of that wiring goes
missing, so these tests read the Makefile, the hooks and the type checker's settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parents[2]
LINTED = "serve adapters trainer tests"


def _rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, commands) of one Makefile rule."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    commands = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        commands.append(line.strip())
    return lines[start].split(":", 1)[1].split(), commands


def _hooks() -> list[dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_make_test_runs_the_lint_step_first():
    prerequisites, _ = _rule("test")
    assert prerequisites == ["lint"]


def test_lint_checks_the_format_and_the_types_after_ruff():
    _, commands = _rule("lint")
    assert commands[:3] == [
        f"$(BIN)/ruff check {LINTED}",
        f"$(BIN)/ruff format --check {LINTED}",
        "$(BIN)/mypy",
    ]
    assert "$(BIN)/lint-imports" in commands


def test_every_lint_command_has_a_commit_hook_that_runs_the_same_tool():
    _, commands = _rule("lint")
    hooks = _hooks()
    assert {hook["id"] for hook in hooks} == {"ruff-check", "ruff-format", "mypy", "import-linter"}
    for command in commands:
        command = command.replace("$(BIN)/", ".venv/bin/")
        (hook,) = [h for h in hooks if command.startswith(h["entry"])]
        assert hook["language"] == "system"  # the venv's tool, the version `make lint` runs
        if hook.get("pass_filenames", True):
            # Staged files of the folders the command names, and only those.
            folders = command.removeprefix(hook["entry"]).replace("--check", "").split()
            assert folders == LINTED.split()
            for folder in folders:
                assert re.search(hook["files"], f"{folder}/module.py")
            assert not re.search(hook["files"], "docs/module.py")
        else:  # whole packages, exactly as `make lint` runs it
            assert hook["entry"] == command


def test_mypy_finds_each_package_under_its_import_name():
    # Our folders install under other names; mypy finds them through a folder of links.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    settings = pyproject["tool"]["mypy"]
    assert sorted(settings["packages"]) == sorted(mapping)
    for package, folder in mapping.items():
        link = ROOT / settings["mypy_path"] / package.replace(".", "/")
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()
