"""The routing snapshot: base, live, pinned and canary versions, tenant isolation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loraloop.adapters.rollout_policy import RolloutPolicy
from loraloop.adapters.rollouts.book import RolloutRecord
from loraloop.adapters.serving_view import ServingView
from loraloop.adapters.versions import AdapterRecord, VersionRecord
from loraloop.serve.errors import AdapterNotFound
from loraloop.serve.routing import RoutingSnapshot

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _serving_view(rollouts=(), **pointers) -> ServingView:
    """a/one: v1 live (v2 canary when asked); b/two: v1 live; lora ids 1, 2, 3."""
    versions = [("a/one", 1), ("a/one", 2), ("b/two", 1)]
    servable = tuple(
        VersionRecord(
            adapter_id,
            number,
            "live",
            lora_id,
            "0" * 64,
            f"sha256/{lora_id}",
            "f",
            None,
            8,
            8.0,
            ("q_proj",),
            1,
            "upload",
            None,
            {},
            {},
            NOW,
            "t",
        )
        for lora_id, (adapter_id, number) in enumerate(versions, start=1)
    )
    adapters = (
        AdapterRecord(
            "a/one", None, NOW, "t", 1, pointers.get("canary"), pointers.get("percent"), 2
        ),
        AdapterRecord("b/two", None, NOW, "t", 1, None, None, 1),
    )
    return ServingView(7, adapters, servable, {}, tuple(rollouts))


def test_routing_resolves_base_live_and_pinned(tmp_path):
    snapshot = RoutingSnapshot.from_view("base", _serving_view(), lambda key: tmp_path / key)
    assert snapshot.revision == 7
    assert snapshot.resolve("base") is None
    one = snapshot.resolve("a/one")
    assert (one.adapter_id, one.version, one.served_name) == ("a/one", 1, "a/one@1")
    assert one.path == tmp_path / "sha256/1"
    assert snapshot.resolve("a/one@2").lora_int_id == 2
    assert snapshot.resolve("b/two").lora_int_id == 3
    for unknown in ("a/one@3", "c/three", "not a name"):
        with pytest.raises(AdapterNotFound):
            snapshot.resolve(unknown)


def test_routing_confines_a_tenant_to_its_own_adapters(tmp_path):
    snapshot = RoutingSnapshot.from_view("base", _serving_view(), lambda key: tmp_path / key)
    assert snapshot.resolve("a/one", tenant="a").version == 1
    assert snapshot.resolve("base", tenant="a") is None
    for foreign in ("b/two", "b/two@1"):
        with pytest.raises(AdapterNotFound):
            snapshot.resolve(foreign, tenant="a")
    assert [r.adapter_id for r in snapshot.live_adapters("a")] == ["a/one"]


def test_routing_sends_the_canary_its_share(tmp_path):
    state = _serving_view(canary=2, percent=25)
    snapshot = RoutingSnapshot.from_view("base", state, lambda key: tmp_path / key)
    assert snapshot.resolve("a/one", draw=lambda: 0.2499).version == 2
    assert snapshot.resolve("a/one", draw=lambda: 0.25).version == 1
    assert snapshot.resolve("a/one@1", draw=lambda: 0.0).version == 1  # pinned: never diverted
    assert [r.served_name for r in snapshot.routed_adapters()] == ["a/one@1", "b/two@1", "a/one@2"]


def _rollout(candidate: int, baseline: int) -> RolloutRecord:
    return RolloutRecord(
        1,
        "a/one",
        candidate,
        baseline,
        "active",
        0,
        NOW,
        RolloutPolicy(),
        {},
        None,
        None,
        None,
        NOW,
        "t",
        None,
    )


def test_routing_keeps_both_versions_of_a_rollout_warm(tmp_path):
    view = _serving_view(rollouts=[_rollout(candidate=2, baseline=1)])  # in shadow: no canary
    snapshot = RoutingSnapshot.from_view("base", view, lambda key: tmp_path / key)
    assert snapshot.resolve("a/one", draw=lambda: 0.0).version == 1  # shadow: live answers
    assert [r.served_name for r in snapshot.routed_adapters()] == ["a/one@1", "b/two@1", "a/one@2"]
    rollout = snapshot.rollouts["a/one"]
    assert snapshot.rollout_of(snapshot.resolve("a/one@2")) is rollout
    assert snapshot.rollout_of(snapshot.resolve("a/one@1")) is rollout
    assert snapshot.rollout_of(snapshot.resolve("b/two")) is None
    assert snapshot.rollout_of(None) is None  # the base model


def test_a_rollouts_version_that_cannot_be_served_is_not_warmed(tmp_path):
    view = _serving_view(rollouts=[_rollout(candidate=3, baseline=1)])  # 3: not servable
    snapshot = RoutingSnapshot.from_view("base", view, lambda key: tmp_path / key)
    assert [r.served_name for r in snapshot.routed_adapters()] == ["a/one@1", "b/two@1"]


def test_a_version_of_another_base_is_never_routed_and_operators_learn_why(tmp_path):
    view = _serving_view()
    view = ServingView(
        view.revision,
        view.adapters,
        view.servable,
        {},
        (),
        elsewhere={("a/one", 3): "f" * 64},
        base="e" * 64,
    )
    snapshot = RoutingSnapshot.from_view("base", view, lambda key: tmp_path / key)
    with pytest.raises(AdapterNotFound, match="made for another base model") as operator:
        snapshot.resolve("a/one@3")  # an operator's request
    assert "f" * 12 in operator.value.message and "e" * 12 in operator.value.message
    with pytest.raises(AdapterNotFound) as tenant:
        snapshot.resolve("a/one@3", tenant="a")
    assert "base model" not in tenant.value.message
