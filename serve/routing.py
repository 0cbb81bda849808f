"""The routing snapshot: what a client writes in `model`, mapped to what the engine runs.

A snapshot is built from one read of the registry and never changes; following the registry
means building a new one and swapping the reference, so a request resolves against one
consistent view from start to finish.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loraloop.adapters.names import ModelRef, parse_model_ref
from loraloop.adapters.rollouts.book import RolloutRecord
from loraloop.adapters.serving_view import ServingView
from loraloop.adapters.tenants import ActiveKey

from .engine.interface import AdapterRef
from .errors import AdapterNotFound


@dataclass(frozen=True)
class Canary:
    version: int
    percent: int  # of the adapter's unpinned requests


@dataclass(frozen=True)
class RoutingSnapshot:
    base_model: str
    revision: int = -1  # the registry revision it was read at; -1: not read yet
    versions: Mapping[tuple[str, int], AdapterRef] = field(default_factory=dict)
    live: Mapping[str, int] = field(default_factory=dict)  # adapter id -> live version
    canaries: Mapping[str, Canary] = field(default_factory=dict)
    keys: Mapping[str, ActiveKey] = field(default_factory=dict)  # tenant keys by prefix
    known_adapters: frozenset[str] = frozenset()  # every registered adapter id
    recording: frozenset[str] = frozenset()  # adapters whose completions are kept
    rollouts: Mapping[str, RolloutRecord] = field(default_factory=dict)  # unfinished ones
    # Versions made for another base model, with its fingerprint: never routed here
    # (operators are told why).
    elsewhere: Mapping[tuple[str, int], str] = field(default_factory=dict)
    base_fingerprint: str = ""  # this server's base model's

    @classmethod
    def from_view(
        cls, base_model: str, view: ServingView, path_of: Callable[[str], Path]
    ) -> RoutingSnapshot:
        refs = [
            AdapterRef(v.adapter_id, v.number, v.lora_id, path_of(v.storage_key))
            for v in view.servable
        ]
        return cls(
            base_model,
            revision=view.revision,
            versions={(r.adapter_id, r.version): r for r in refs},
            live={a.adapter_id: a.live_version for a in view.adapters if a.live_version},
            canaries={
                a.adapter_id: Canary(a.canary_version, a.canary_percent)
                for a in view.adapters
                if a.canary_version and a.canary_percent
            },
            keys=view.keys,
            known_adapters=frozenset(a.adapter_id for a in view.adapters),
            recording=frozenset(a.adapter_id for a in view.adapters if a.records_completions),
            rollouts={r.adapter_id: r for r in view.rollouts},
            elsewhere=view.elsewhere,
            base_fingerprint=view.base,
        )

    def resolve(
        self, model: str, tenant: str | None = None, draw: Callable[[], float] = random.random
    ) -> AdapterRef | None:
        """None means the base model. Unknown names, and other tenants' adapters when
        `tenant` is set, raise the same AdapterNotFound."""
        if model == self.base_model:
            return None
        ref = self._visible_ref(model, tenant)
        version = ref.version or self._unpinned_version(ref.adapter_id, draw)
        adapter = self.versions.get((ref.adapter_id, version)) if version else None
        if adapter is None:
            other = self.elsewhere.get((ref.adapter_id, version)) if version else None
            if tenant is None and other is not None:
                raise AdapterNotFound(
                    model,
                    why=(
                        f"version {version} of '{ref.adapter_id}' was made for another base model "
                        f"(fingerprint {other[:12]}...) than this server's "
                        f"({self.base_fingerprint[:12]}...): same shapes are not the same weights; "
                        "carry it with `loraloop adapters transfer`"
                    ),
                )
            raise AdapterNotFound(model)
        return adapter

    def registered(self, model: str, tenant: str | None = None) -> tuple[str, int | None]:
        """(adapter id, pinned version or None) for any registered adapter the caller may
        name, live or not (feedback can be about a candidate); isolated as in `resolve`."""
        ref = self._visible_ref(model, tenant)
        known = (
            (ref.adapter_id, ref.version) in self.versions
            if ref.version
            else ref.adapter_id in self.known_adapters
        )
        if not known:
            raise AdapterNotFound(model)
        return ref.adapter_id, ref.version

    @staticmethod
    def _visible_ref(model: str, tenant: str | None) -> ModelRef:
        """The adapter `model` names; another tenant's looks exactly like a missing one."""
        ref = parse_model_ref(model)
        if ref is None or (tenant is not None and ref.tenant != tenant):
            raise AdapterNotFound(model)
        return ref

    def _unpinned_version(self, adapter_id: str, draw: Callable[[], float]) -> int | None:
        canary = self.canaries.get(adapter_id)
        if canary is not None and draw() * 100 < canary.percent:
            return canary.version
        return self.live.get(adapter_id)

    def live_adapters(self, tenant: str | None = None) -> list[AdapterRef]:
        return [
            self.versions[(adapter_id, v)]
            for adapter_id, v in sorted(self.live.items())
            if tenant is None or adapter_id.split("/", 1)[0] == tenant
        ]

    def routed_adapters(self) -> list[AdapterRef]:
        """Versions unpinned requests can reach, and both versions of every rollout (each
        answers the other's shadows): what must be warm before a switch."""
        canaries = [self.versions[(a, c.version)] for a, c in sorted(self.canaries.items())]
        rollouts = [
            self.versions[key]
            for a, r in sorted(self.rollouts.items())
            for key in ((a, r.candidate), (a, r.baseline))
            if key in self.versions
        ]
        return list(dict.fromkeys(self.live_adapters() + canaries + rollouts))

    def rollout_of(self, adapter: AdapterRef | None) -> RolloutRecord | None:
        """The unfinished rollout whose candidate or baseline `adapter` is, if any."""
        if adapter is None:
            return None
        rollout = self.rollouts.get(adapter.adapter_id)
        if rollout is None or adapter.version not in (rollout.candidate, rollout.baseline):
            return None
        return rollout


class CurrentRoutes:
    """Holds the current snapshot; a swap is one reference assignment, atomic for readers.

    While the registry cannot be read, serving goes on from the last snapshot;
    `registry_lost_at` says since when (time.monotonic()), for /ready and the metrics."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot
        self.registry_lost_at: float | None = None

    def swap(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot
