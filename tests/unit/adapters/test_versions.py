"""The registry on real SQLite and PostgreSQL: versions, pointers, history, concurrency."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from loraloop.adapters.errors import AdapterInvalid, Conflict, InvalidArgument, NotFound
from loraloop.adapters.schema import ApiKey, Base
from loraloop.adapters.serving_view import read_serving_view
from loraloop.adapters.tenants import hash_key
from loraloop.adapters.validation import ADAPTER_FILES
from loraloop.adapters.versions import NO_LIVE_VERSION, NewVersion

ADAPTER = "acme/support"


def test_migrations_build_exactly_the_declared_schema(registry):
    with registry.db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    registry.db.upgrade()  # a second run (another replica starting) changes nothing
    assert registry.db.revision() == 0


def test_register_records_what_the_version_is(registry, files, base):
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="alice")
    first, created = registry.adapters.register(ADAPTER, files[0], NewVersion(), actor="alice")
    second, _ = registry.adapters.register(
        ADAPTER,
        files[1],
        NewVersion(
            source="trainer",
            parent_version=1,
            metrics={"win_rate": 0.61},
            tags={"run": "r7"},
            reason="nightly",
        ),
        actor="trainer",
    )
    assert created and (first.number, second.number) == (1, 2)
    assert first.lora_id != second.lora_id
    assert (second.status, second.rank, second.alpha) == ("candidate", 8, 8.0)
    assert second.target_modules == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert (second.source, second.parent_version, second.created_by) == ("trainer", 1, "trainer")
    assert (dict(second.metrics), dict(second.tags)) == ({"win_rate": 0.61}, {"run": "r7"})
    assert second.base_fingerprint == base.fingerprint
    stored = registry.store.path_of(second.storage_key)
    assert sorted(p.name for p in stored.iterdir()) == sorted(ADAPTER_FILES)
    assert (stored / "adapter_model.safetensors").read_bytes() == (
        files[1]["adapter_model.safetensors"].read_bytes()
    )


def test_same_files_twice_give_the_existing_version(registry, files):
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    first, _ = registry.adapters.register(ADAPTER, files[0], NewVersion(), actor="test")
    events = len(registry.adapters.history(ADAPTER))
    again, created = registry.adapters.register(ADAPTER, files[0], NewVersion(), actor="test")
    assert (created, again.number, again.lora_id) == (False, 1, first.lora_id)
    assert len(registry.adapters.versions(ADAPTER)) == 1
    assert len(registry.adapters.history(ADAPTER)) == events
    assert len(list((registry.store.root / "sha256").glob("*/*"))) == 1
    assert not any(registry.store.staging.iterdir())


def test_refused_adapter_changes_nothing(registry, files, tmp_path):
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    revision = registry.db.revision()
    truncated = tmp_path / "adapter_model.safetensors"
    weights = files[0]["adapter_model.safetensors"].read_bytes()
    truncated.write_bytes(weights[: len(weights) // 2])
    bad = {**files[0], "adapter_model.safetensors": truncated}
    with pytest.raises(AdapterInvalid) as refused:
        registry.adapters.register(ADAPTER, bad, NewVersion(), actor="test")
    assert "corrupt or truncated" in refused.value.message
    assert registry.db.revision() == revision
    assert registry.adapters.versions(ADAPTER) == []
    assert not (registry.store.root / "sha256").exists()


def test_names_are_validated(registry):
    registry.tenants.create("acme", actor="test")
    for bad in ["acme/../x", "/etc/passwd", "Acme/x", "acme/x/y", "acme"]:
        with pytest.raises(InvalidArgument):
            registry.adapters.create(bad, actor="test")
    with pytest.raises(NotFound):
        registry.adapters.create("nobody/x", actor="test")


def test_promote_is_compare_and_swap(three_versions):
    record = three_versions.promote(ADAPTER, 1, actor="a", expected_live=NO_LIVE_VERSION)
    assert record.live_version == 1
    with pytest.raises(Conflict, match=r"live version .* is 1"):
        three_versions.promote(ADAPTER, 2, actor="a", expected_live=NO_LIVE_VERSION)
    assert three_versions.promote(ADAPTER, 2, actor="a", expected_live=1).live_version == 2
    statuses = {v.number: v.status for v in three_versions.versions(ADAPTER)}
    assert statuses == {1: "retired", 2: "live", 3: "candidate"}
    with pytest.raises(NotFound):
        three_versions.promote(ADAPTER, 9, actor="a")


def test_rollback_returns_to_the_previous_live_version(three_versions):
    with pytest.raises(Conflict, match="no live version"):
        three_versions.rollback(ADAPTER, actor="a")
    three_versions.promote(ADAPTER, 1, actor="a")
    three_versions.promote(ADAPTER, 2, actor="a")
    assert three_versions.rollback(ADAPTER, actor="a").live_version == 1
    with pytest.raises(Conflict, match="no earlier live version"):
        three_versions.rollback(ADAPTER, actor="a")  # v2 was rolled back from: not "previous"
    three_versions.promote(ADAPTER, 3, actor="a")
    assert three_versions.rollback(ADAPTER, actor="a").live_version == 1
    assert three_versions.rollback(ADAPTER, actor="a", to_version=2).live_version == 2


def test_rejected_versions_never_serve_again(three_versions):
    three_versions.promote(ADAPTER, 1, actor="a")
    with pytest.raises(Conflict, match="is live"):
        three_versions.reject(ADAPTER, 1, actor="a")
    assert three_versions.reject(ADAPTER, 2, actor="a", reason="bad").status == "rejected"
    for change in (
        lambda: three_versions.promote(ADAPTER, 2, actor="a"),
        lambda: three_versions.set_canary(ADAPTER, 2, 10, actor="a"),
        lambda: three_versions.rollback(ADAPTER, actor="a", to_version=2),
    ):
        with pytest.raises(Conflict, match="rejected"):
            change()
    three_versions.promote(ADAPTER, 3, actor="a")
    three_versions.reject(ADAPTER, 1, actor="a", reason="regressed")
    with pytest.raises(Conflict, match="no earlier live version"):
        three_versions.rollback(ADAPTER, actor="a")  # v1 was the previous one, but rejected


def test_canary_rules(three_versions):
    with pytest.raises(Conflict, match="no live version"):
        three_versions.set_canary(ADAPTER, 2, 25, actor="a")
    three_versions.promote(ADAPTER, 1, actor="a")
    with pytest.raises(Conflict):
        three_versions.set_canary(ADAPTER, 1, 25, actor="a")
    with pytest.raises(InvalidArgument):
        three_versions.set_canary(ADAPTER, 2, 100, actor="a")
    record = three_versions.set_canary(ADAPTER, 2, 25, actor="a")
    assert (record.canary_version, record.canary_percent) == (2, 25)
    assert three_versions.promote(ADAPTER, 2, actor="a").canary_version is None
    three_versions.set_canary(ADAPTER, 3, 10, actor="a")
    three_versions.reject(ADAPTER, 3, actor="a")
    assert three_versions.get(ADAPTER).canary_version is None


def test_history_records_every_change_with_actor_and_reason(three_versions):
    three_versions.promote(ADAPTER, 1, actor="admin:alice", reason="first release")
    three_versions.set_canary(ADAPTER, 2, 25, actor="admin:bob", reason="try v2")
    three_versions.clear_canary(ADAPTER, actor="admin:bob", reason="enough data")
    three_versions.promote(ADAPTER, 2, actor="trainer", reason="gate passed")
    three_versions.rollback(ADAPTER, actor="admin:alice", reason="complaints")
    three_versions.reject(ADAPTER, 2, actor="admin:alice", reason="regressed")
    three_versions.retire(ADAPTER, 3, actor="admin:carol", reason="superseded")
    events = [
        (e.kind, e.actor, e.from_version, e.to_version, e.reason)
        for e in three_versions.history(ADAPTER)
    ]
    assert events == [
        ("adapter_created", "test", None, None, None),
        ("register", "test", None, 1, None),
        ("register", "test", None, 2, None),
        ("register", "test", None, 3, None),
        ("promote", "admin:alice", None, 1, "first release"),
        ("canary_set", "admin:bob", None, 2, "try v2"),
        ("canary_cleared", "admin:bob", 2, None, "enough data"),
        ("promote", "trainer", 1, 2, "gate passed"),
        ("rollback", "admin:alice", 2, 1, "complaints"),
        ("reject", "admin:alice", 2, None, "regressed"),
        ("retire", "admin:carol", 3, None, "superseded"),
    ]
    assert [e.id for e in three_versions.history(ADAPTER, limit=2)] == [
        e.id for e in three_versions.history(ADAPTER)[-2:]
    ]


def run_in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as exc:  # collected and checked by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_promotes_are_serialized_and_none_is_lost(three_versions):
    def promote_many(index: int) -> None:
        for step in range(5):
            three_versions.promote(ADAPTER, 1 + (index + step) % 3, actor=f"worker-{index}")

    assert run_in_threads(8, promote_many) == []
    promotes = [e for e in three_versions.history(ADAPTER, limit=1000) if e.kind == "promote"]
    for before, after in itertools.pairwise(promotes):
        assert after.from_version == before.to_version  # no promote saw a stale live version
    assert three_versions.get(ADAPTER).live_version == promotes[-1].to_version
    live = [v.number for v in three_versions.versions(ADAPTER) if v.status == "live"]
    assert live == [promotes[-1].to_version]


def test_concurrent_compare_and_swap_lets_exactly_one_win(three_versions):
    three_versions.promote(ADAPTER, 1, actor="a")
    errors = run_in_threads(
        8, lambda i: three_versions.promote(ADAPTER, 2 + i % 2, actor=f"w{i}", expected_live=1)
    )
    assert len(errors) == 7 and all(isinstance(e, Conflict) for e in errors)
    assert three_versions.get(ADAPTER).live_version in (2, 3)


def test_concurrent_registration_of_the_same_files_gives_one_version(registry, files):
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    numbers = []
    errors = run_in_threads(
        6,
        lambda i: numbers.append(
            registry.adapters.register(ADAPTER, files[0], NewVersion(), actor="t")[0].number
        ),
    )
    assert errors == [] and numbers == [1] * 6


def test_keys_are_stored_hashed_and_revocable(registry):
    registry.tenants.create("acme", actor="test")
    issued = registry.tenants.issue_key("acme", actor="admin", label="ci")
    with registry.db.reading() as session:
        row = session.scalar(select(ApiKey))
        assert row.key_hash == hash_key(issued.key) and issued.key not in vars(row).values()
    state = read_serving_view(registry.db, registry.adapters.base)
    assert state.keys[issued.record.prefix].tenant == "acme"
    registry.tenants.revoke_key("acme", issued.record.prefix, actor="admin", reason="leaked")
    assert issued.record.prefix not in read_serving_view(registry.db, registry.adapters.base).keys
    assert registry.tenants.list_keys("acme")[0].revoked_at is not None


def test_every_write_moves_the_revision_and_the_serving_view_follows(three_versions, registry):
    before = registry.db.revision()
    three_versions.promote(ADAPTER, 1, actor="a")
    three_versions.set_canary(ADAPTER, 2, 25, actor="a")
    three_versions.reject(ADAPTER, 3, actor="a")
    state = read_serving_view(registry.db, registry.adapters.base)
    assert state.revision == before + 3
    (adapter,) = state.adapters
    assert (adapter.live_version, adapter.canary_version, adapter.canary_percent) == (1, 2, 25)
    assert sorted(v.number for v in state.servable) == [1, 2]  # rejected v3 is not servable
