"""The registry on a real database (SQLite and PostgreSQL, see the `database` fixture), with
three different adapters' files to register."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database
from loraloop.adapters.registry import registry_on
from loraloop.adapters.store import WeightStore
from loraloop.adapters.validation import ADAPTER_FILES
from loraloop.adapters.versions import AdapterBook, NewVersion, RegistrationPolicy

ADAPTER = "acme/support"


def adapter_files(directory: Path) -> dict[str, Path]:
    return {name: directory / name for name in ADAPTER_FILES}


@pytest.fixture(scope="module")
def base(demo_model) -> BaseModelInfo:
    return BaseModelInfo.load(demo_model, aliases=["demo"])


@pytest.fixture
def registry(database, tmp_path, base):
    db = Database(database)
    db.upgrade()
    store = WeightStore(tmp_path / "weights")
    policy = RegistrationPolicy(base, max_rank=64, max_bytes=1 << 30)
    yield registry_on(db, store, policy)
    db.dispose()


@pytest.fixture
def files(adapter_dirs) -> list[dict[str, Path]]:
    """Three different adapters' files, to register as versions 1, 2, 3."""
    names = ["acme/support", "acme/sales", "acme/legal"]
    return [adapter_files(adapter_dirs[name]) for name in names]


@pytest.fixture
def three_versions(registry, files) -> AdapterBook:
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    for version_files in files:
        registry.adapters.register(ADAPTER, version_files, NewVersion(), actor="test")
    return registry.adapters
