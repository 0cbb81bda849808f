"""The routing snapshot: what a client writes in `model`, mapped to what the engine runs.

A snapshot is immutable; changing routes means building a new one and swapping the
reference, so a request resolves against one consistent view from start to finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loraloop.adapters.names import parse_model_ref

from .engine.protocol import AdapterRef
from .errors import AdapterNotFound


@dataclass(frozen=True)
class RoutingSnapshot:
    base_model: str
    versions: Mapping[tuple[str, int], AdapterRef]  # (adapter id, version) -> version
    live: Mapping[str, int]  # adapter id -> live version

    @classmethod
    def from_directories(cls, base_model: str, adapters: Mapping[str, Path]) -> RoutingSnapshot:
        """Adapters given at start-up: each is version 1, live, with its own LoRA id."""
        refs = [
            AdapterRef(adapter_id, 1, lora_int_id, Path(path).resolve())
            for lora_int_id, (adapter_id, path) in enumerate(sorted(adapters.items()), start=1)
        ]
        return cls(
            base_model,
            versions={(r.adapter_id, r.version): r for r in refs},
            live={r.adapter_id: r.version for r in refs},
        )

    def resolve(self, model: str) -> AdapterRef | None:
        """None means the base model; unknown names raise AdapterNotFound."""
        if model == self.base_model:
            return None
        ref = parse_model_ref(model)
        if ref is None:
            raise AdapterNotFound(model)
        version = ref.version if ref.version is not None else self.live.get(ref.adapter_id)
        adapter = self.versions.get((ref.adapter_id, version)) if version else None
        if adapter is None:
            raise AdapterNotFound(model)
        return adapter

    def live_adapters(self) -> list[AdapterRef]:
        return [self.versions[(adapter_id, v)] for adapter_id, v in sorted(self.live.items())]


class RoutingTable:
    """Holds the current snapshot; a swap is one reference assignment, atomic for readers."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot

    def swap(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot
