"""The content-addressed weight store: one directory per distinct adapter, named by its hash.

A directory appears whole or not at all (written to a temp dir, fsynced, renamed) and is
never rewritten: vLLM re-reads adapter files after evicting them from its cache, so a
version's files must stay exactly what was validated. Registering the same files again
finds the directory already there and keeps it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageFull
from .names import ADAPTER_FILES

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredAdapter:
    content_hash: str  # sha256 over both files (see content_hash)
    storage_key: str  # the directory, relative to the store root


def content_hash(files: Mapping[str, Path]) -> str:
    """sha256 over each adapter file's name and sha256: the weights and the config that
    scales them (lora_alpha), since the same tensors with another alpha are another adapter."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(f"{name}\0{_file_sha256(files[name])}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _no_room_as_storage_full(root: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(root).free
        raise StorageFull(
            f"The adapter store has no room left ({free} bytes free on its "
            "filesystem); nothing was stored. Free space or enlarge the "
            "volume, then send it again."
        ) from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WeightStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.staging = self.root / "staging"  # same filesystem, so rename is atomic

    def path_of(self, storage_key: str) -> Path:
        return self.root / storage_key

    def staging_dir(self) -> Path:
        """A fresh private directory for files on their way in (uploads, copies)."""
        path = self.staging / uuid.uuid4().hex
        path.mkdir(parents=True, mode=0o700)
        return path

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A staging directory that is removed, with whatever is left in it, on the way out."""
        with _no_room_as_storage_full(self.root):
            path = self.staging_dir()
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)

    def put(self, files: Mapping[str, Path]) -> StoredAdapter:
        digest = content_hash(files)
        key = f"sha256/{digest[:2]}/{digest}"
        final = self.path_of(key)
        if not final.exists():
            with _no_room_as_storage_full(self.root):
                self._publish(files, final)
        return StoredAdapter(digest, key)

    def _publish(self, files: Mapping[str, Path], final: Path) -> None:
        temp = self.staging_dir()
        try:
            for name in ADAPTER_FILES:
                shutil.copyfile(files[name], temp / name)
                _fsync(temp / name)
            temp.chmod(0o755)
            _fsync(temp)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(temp, final)
            except OSError:
                if not final.is_dir():  # lost a race to an identical copy: that one stands
                    raise
            _fsync(final.parent)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
