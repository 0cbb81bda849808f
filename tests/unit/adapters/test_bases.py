"""One registry, two base models: each base has its own live and canary pointers, a server
routes only versions made for its base, and the pointers of registries made before per-base
pointers existed move to their base on upgrade."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database
from loraloop.adapters.registry import registry_on
from loraloop.adapters.schema import LivePointer
from loraloop.adapters.serving_view import read_serving_view
from loraloop.adapters.versions import NewVersion, RegistrationPolicy
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import adapter_files

ADAPTER = "acme/support"


@pytest.fixture
def successor_registry(registry, successor_model, tmp_path):
    """The same database and store, as processes of the second base model see them."""
    policy = RegistrationPolicy(
        BaseModelInfo.load(successor_model, aliases=["successor"]), max_rank=64, max_bytes=1 << 30
    )
    return registry_on(registry.db, registry.store, policy)


@pytest.fixture
def successor_files(successor_model, tmp_path):
    return adapter_files(build_random_adapter(successor_model, tmp_path / "b", seed=11))


def test_each_base_has_its_own_live_version(
    registry, successor_registry, three_versions, successor_files
):
    old, new = registry.adapters, successor_registry.adapters
    old.promote(ADAPTER, 1, actor="op")
    carried, _ = new.register(ADAPTER, successor_files, NewVersion(source="transfer"), actor="op")
    assert carried.number == 4 and carried.base_fingerprint == new.base != old.base
    new.promote(ADAPTER, 4, actor="op", expected_live=0)  # none live on the new base yet
    assert (old.get(ADAPTER).live_version, new.get(ADAPTER).live_version) == (1, 4)
    old.promote(ADAPTER, 2, actor="op", expected_live=1)
    assert (old.get(ADAPTER).live_version, new.get(ADAPTER).live_version) == (2, 4)
    assert old.rollback(ADAPTER, actor="op").live_version == 1  # the old base's stack only
    assert new.get(ADAPTER).live_version == 4
    statuses = {v.number: v.status for v in old.versions(ADAPTER)}
    assert statuses == {1: "live", 2: "retired", 3: "candidate", 4: "live"}


def test_a_server_routes_only_versions_of_its_base(
    registry, successor_registry, three_versions, successor_files
):
    registry.adapters.promote(ADAPTER, 1, actor="op")
    successor_registry.adapters.register(ADAPTER, successor_files, NewVersion(), actor="op")
    successor_registry.adapters.promote(ADAPTER, 4, actor="op")
    old_view = read_serving_view(registry.db, registry.adapters.base)
    new_view = read_serving_view(registry.db, successor_registry.adapters.base)
    assert {v.number for v in old_view.servable} == {1, 2, 3}
    assert {v.number for v in new_view.servable} == {4}
    old, new = registry.adapters.base, successor_registry.adapters.base
    assert old_view.elsewhere == {(ADAPTER, 4): new}
    assert new_view.elsewhere == {(ADAPTER, n): old for n in (1, 2, 3)}
    assert [a.live_version for a in old_view.adapters] == [1]
    assert [a.live_version for a in new_view.adapters] == [4]


def test_upgrading_moves_the_pointers_to_their_base(tmp_path, files, base):
    """A registry at revision 0004 (pointers on the adapter row) upgraded to the newest."""
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.upgrade("0004")
    with db.engine.begin() as connection:
        now = {"now": "2026-12-01 00:00:00"}
        connection.execute(
            text(
                "INSERT INTO tenants (id, name, created_at, created_by) "
                "VALUES (1, 'acme', :now, 't')"
            ),
            now,
        )
        connection.execute(
            text(
                "INSERT INTO adapters (id, tenant_id, name, created_at, created_by, live_version, "
                "canary_version, canary_percent) VALUES (1, 1, 'support', :now, 't', 2, 3, 10), "
                "(2, 1, 'idle', :now, 't', NULL, NULL, NULL)"
            ),
            now,
        )
        for number in (1, 2, 3):
            connection.execute(
                text(
                    "INSERT INTO adapter_versions (adapter_id, number, status, content_hash, "
                    "storage_key, base_fingerprint, rank, alpha, target_modules, size_bytes, "
                    "source, metrics, tags, created_at, created_by) VALUES (1, :n, 'candidate', "
                    ":h, 'k', :base, 8, 8, '[]', 1, 'upload', '{}', '{}', :now, 't')"
                ),
                {"n": number, "h": f"h{number}", "base": base.fingerprint, **now},
            )
    db.upgrade()
    with db.reading() as session:
        rows = session.execute(
            select(
                LivePointer.adapter_id,
                LivePointer.base_fingerprint,
                LivePointer.live_version,
                LivePointer.canary_version,
                LivePointer.canary_percent,
            )
        ).all()
    assert rows == [(1, base.fingerprint, 2, 3, 10)]
    db.dispose()
