"""The regular (non-editable) wheel, as the Dockerfile installs it, holds every module, the
migrations and the console's files.

An editable install maps the source folders whole, so a subpackage missing from
pyproject's package list passes every other test and only fails in the image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
FOLDERS = {
    "serve": "loraloop/serve",
    "adapters": "loraloop/adapters",
    "trainer": "loraloop/trainer",
}
# Modules, Alembic's script template, and the console's page, modules and style sheet.
SHIPPED_SUFFIXES = (".py", ".mako", ".html", ".js", ".css")


def test_wheel_ships_every_module_the_migrations_and_the_console(tmp_path):
    # Built from a copy: setuptools reuses a `build/` folder it finds, stale files included.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for folder in FOLDERS:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("loraloop-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())

    expected = {
        f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, installed in FOLDERS.items()
        for path in (ROOT / folder).rglob("*")
        if path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in path.parts
    }
    assert any("/migrations/versions/" in name for name in expected)
    assert "loraloop/serve/console/static/index.html" in expected
    assert sorted(expected - shipped) == []
