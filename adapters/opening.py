"""Opening the registry from a process's settings: the server and the trainer do it alike."""

from __future__ import annotations

from pathlib import Path

from .db import Database, sqlite_url
from .registry import AdapterRegistry, RegistrationPolicy
from .store import WeightStore
from .validation import BaseModelInfo


def local_model_dir(model: str) -> Path:
    """The base model's files on this machine; a hub id is fetched once into the hub cache."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def open_registry(*, model: str, aliases: list[str], data_dir: Path, database_url: str | None,
                  max_rank: int, max_bytes: int) -> AdapterRegistry:
    """The registry, its schema migrated to the newest version (safe from many processes)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    db = Database(database_url or sqlite_url(data_dir))
    db.upgrade()
    base = BaseModelInfo.load(local_model_dir(model), aliases=[model, *aliases])
    policy = RegistrationPolicy(base, max_rank, max_bytes)
    return AdapterRegistry(db, WeightStore(Path(data_dir) / "weights"), policy)
