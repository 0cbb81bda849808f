"""Trainers share the weight volume: a starting trainer removes only the scratch directories
of trainers that hold no lease any more (and its own from an earlier life), never a running
trainer's. Leases on a real registry (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from loraloop.adapters.leased_jobs import lease_holders
from loraloop.trainer.scratch import remove_leftovers, scratch_dir

ADAPTER, OTHER = "acme/support", "acme/sales"


def test_a_starting_trainer_removes_only_what_stopped_trainers_left(registry, three_versions):
    registry.adapters.create(OTHER, actor="test")
    registry.training.claim(ADAPTER, worker="killed trainer", lease_s=-1)  # lapsed
    alive = registry.training.claim(OTHER, worker="busy trainer", lease_s=60)
    staging = registry.store.staging
    busy = scratch_dir(staging, "busy trainer")  # mid-run
    killed = scratch_dir(staging, "killed trainer")
    mine = scratch_dir(staging, "me")  # this trainer's name, from before a restart
    unnamed = staging / "train-abc_1234"  # named before directories had owners
    unnamed.mkdir()
    elsewhere = staging / "upload-xyz"  # not a trainer's
    elsewhere.mkdir()
    assert "busy_trainer" in busy.name  # the owner, to read

    def holders():
        return lease_holders(registry.db)

    assert holders() == {"busy trainer"}
    removed = remove_leftovers(staging, worker="me", holders=holders)
    assert sorted(removed) == sorted(Path(d.name) for d in (killed, mine))
    assert [p.exists() for p in (Path(busy.name), unnamed, elsewhere)] == [True] * 3

    registry.training.finish(alive.run_id, "failed", reason="done")  # the last lease ends
    assert remove_leftovers(staging, worker="me", holders=holders) == sorted(
        [Path(busy.name), unnamed]
    )
    assert elsewhere.exists()
