"""A trainer's scratch directories on the shared weight volume, named by their owner.

Trainers of one registry share the volume (weights/staging): a directory's name carries a
digest of its trainer's worker name (and, to read, the name itself), so a trainer starting
up removes only what trainers that hold no lease any more left behind (killed mid-run:
nothing in them was registered), and its own from an earlier life under the same name,
never a running trainer's work.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "train-"
_OWNED = re.compile(r"train-([0-9a-f]{16})-")


def owner_tag(worker: str) -> str:
    return hashlib.sha256(worker.encode()).hexdigest()[:16]


def scratch_dir(staging: Path, worker: str) -> tempfile.TemporaryDirectory:
    """A fresh directory of `worker`'s, removed when the `with` block ends."""
    staging.mkdir(parents=True, exist_ok=True)
    readable = re.sub(r"[^A-Za-z0-9_.]", "_", worker)[:40]
    return tempfile.TemporaryDirectory(
        dir=staging, prefix=f"{PREFIX}{owner_tag(worker)}-{readable}-"
    )


def remove_leftovers(
    staging: Path, *, worker: str, holders: Callable[[], Collection[str]]
) -> list[Path]:
    """Remove the scratch directories whose owner holds no lease (`holders()`: the workers
    that do) or is `worker` itself, starting; the ones removed. A directory named before
    owners were ("train-..." without a digest) goes only when no one holds a lease."""
    # Listed before the leases are read: a directory is made only under a lease, so one
    # made after the listing is not looked at, and one listed has its owner's lease read.
    found = sorted(staging.glob(f"{PREFIX}*"))
    holding = set(holders())
    alive = {owner_tag(holder) for holder in holding} - {owner_tag(worker)}
    removed = []
    for leftover in found:
        owned = _OWNED.match(leftover.name)
        if (owned.group(1) in alive) if owned else bool(holding):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    if removed:
        logger.info("removed %d scratch directories of stopped trainers", len(removed))
    return removed
