"""A base is its weights and its tokenizer, not its shapes: a same-shape successor with other
weights serves none of the old base's versions and is a base adapters can be carried to;
registries that stored shape-only fingerprints are adopted by the base they were made for."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import update

from loraloop.adapters.base_adoption import adopt_shape_only_rows
from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.registry import registry_on
from loraloop.adapters.schema import AdapterVersion, LivePointer
from loraloop.adapters.serving_view import read_serving_view
from loraloop.adapters.versions import RegistrationPolicy
from loraloop.trainer.transfers.runner import TransferRunner, known_targets

from ..conftest import ADAPTER


@pytest.fixture(scope="module")
def twin_model(demo_model, tmp_path_factory) -> Path:
    """The demo model's files with one weight changed: every shape the same."""
    twin = tmp_path_factory.mktemp("twin") / "twin"
    shutil.copytree(demo_model, twin)
    weights = load_file(twin / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("q_proj.weight"))
    weights[name] = weights[name] + 0.01 * torch.ones_like(weights[name])
    save_file(weights, twin / "model.safetensors", metadata={"format": "pt"})
    return twin


def _registry_of(registry, model: Path):
    policy = RegistrationPolicy(BaseModelInfo.load(model), max_rank=64, max_bytes=1 << 30)
    return registry_on(registry.db, registry.store, policy)


def test_other_weights_of_the_same_shapes_are_another_base(demo_model, twin_model):
    demo, twin = BaseModelInfo.load(demo_model), BaseModelInfo.load(twin_model)
    assert demo.shape_fingerprint == twin.shape_fingerprint
    assert demo.fingerprint != twin.fingerprint
    assert BaseModelInfo.load(demo_model).fingerprint == demo.fingerprint  # stable


def test_a_tokenizer_change_alone_is_another_base(demo_model, tmp_path):
    other = tmp_path / "prefix-space"
    shutil.copytree(demo_model, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "add_prefix_space": True}))
    assert BaseModelInfo.load(other).fingerprint != BaseModelInfo.load(demo_model).fingerprint


def test_weight_digests_are_remembered_by_path_size_and_time(demo_model, tmp_path):
    model, cache = tmp_path / "model", tmp_path / "digests.json"
    shutil.copytree(demo_model, model)
    first = BaseModelInfo.load(model, digest_cache=cache).fingerprint
    weights = model / "model.safetensors"
    stat = weights.stat()
    content = bytearray(weights.read_bytes())
    content[-1] ^= 0xFF  # same size; the time put back below: only the cache can answer
    weights.write_bytes(bytes(content))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert BaseModelInfo.load(model, digest_cache=cache).fingerprint == first
    assert BaseModelInfo.load(model).fingerprint != first  # hashed again without the cache


def test_a_same_shape_base_serves_none_of_the_old_versions(registry, three_versions, twin_model):
    registry.adapters.promote(ADAPTER, 1, actor="op")
    twin = _registry_of(registry, twin_model)
    view = read_serving_view(registry.db, twin.adapters.base)
    assert view.servable == ()
    assert [a.live_version for a in view.adapters] == [None]
    assert view.elsewhere == {(ADAPTER, n): registry.adapters.base for n in (1, 2, 3)}


def test_versions_stored_by_shape_are_adopted_by_their_own_base_only(
    registry, three_versions, base, twin_model
):
    registry.adapters.promote(ADAPTER, 1, actor="op")
    with registry.db.transaction() as session:  # as a registry before weights counted
        session.execute(update(AdapterVersion).values(base_fingerprint=base.shape_fingerprint))
        session.execute(update(LivePointer).values(base_fingerprint=base.shape_fingerprint))
    assert read_serving_view(registry.db, base.fingerprint).servable == ()

    assert adopt_shape_only_rows(registry.db, base) == 3
    view = read_serving_view(registry.db, base.fingerprint)
    assert {v.number for v in view.servable} == {1, 2, 3}
    assert [a.live_version for a in view.adapters] == [1]
    twin = BaseModelInfo.load(twin_model)
    assert adopt_shape_only_rows(registry.db, twin) == 0  # nothing left under the old name
    assert read_serving_view(registry.db, twin.fingerprint).servable == ()


def test_a_same_shape_base_is_a_transfer_target(registry, demo_model, twin_model, tmp_path):
    TransferRunner(
        registry, demo_model, known_targets({"twin": str(twin_model)}), worker="w", lease_s=30
    )  # accepted: another base
    copy = tmp_path / "copy"
    shutil.copytree(demo_model, copy)
    with pytest.raises(ValueError, match="own base model"):
        TransferRunner(
            registry, demo_model, known_targets({"copy": str(copy)}), worker="w", lease_s=30
        )
