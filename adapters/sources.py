"""Where a version's files come from when an operator names a directory on the server.

Only directories inside the configured allowed roots are read, judged after resolving every
symlink, so neither `..` nor a link can reach other files. Upload names never become paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import AdapterInvalid
from .names import ADAPTER_FILES
from .validation import PICKLE_SUFFIXES

MAX_ENTRIES = 64  # an adapter directory holds two files; anything far beyond is a wrong path


def _containing_root(path: Path, roots: Sequence[Path]) -> Path | None:
    return next((root for root in roots if path.is_relative_to(root)), None)


def files_in_allowed_dir(path_text: str, allowed_roots: Sequence[Path]) -> dict[str, Path]:
    """Adapter files (name -> resolved path) in the directory `path_text`.

    Other files that tools write beside an adapter (PEFT's README.md) are left out; pickle
    files are kept in, by name only, so that validation refuses them."""
    if not allowed_roots:
        raise AdapterInvalid(
            [
                "registering from a server path is switched off; upload the "
                "files instead, or set LORALOOP_ALLOWED_ADAPTER_ROOTS"
            ]
        )
    if not Path(path_text).is_absolute():
        raise AdapterInvalid(["give the path as an absolute path inside an allowed root"])
    roots = [Path(root).resolve() for root in allowed_roots]
    try:
        directory = Path(path_text).resolve(strict=True)
    except (OSError, RuntimeError):
        raise AdapterInvalid(["the path does not exist on the server"]) from None
    root = _containing_root(directory, roots)
    if root is None:
        raise AdapterInvalid(["the path is outside the allowed adapter roots"])
    if not directory.is_dir():
        raise AdapterInvalid(["the path is not a directory"])
    entries = sorted(directory.iterdir())[: MAX_ENTRIES + 1]
    if len(entries) > MAX_ENTRIES:
        raise AdapterInvalid([f"the directory holds more than {MAX_ENTRIES} entries"])
    files, problems = {}, []
    for entry in entries:
        if entry.name not in ADAPTER_FILES and not entry.name.lower().endswith(PICKLE_SUFFIXES):
            continue
        real = entry.resolve()
        if not real.is_relative_to(root):
            problems.append(f"{entry.name} links outside the allowed adapter roots")
        elif not real.is_file():
            problems.append(f"{entry.name} is not a regular file")
        else:
            files[entry.name] = real
    if problems:
        raise AdapterInvalid(problems)
    return files
