"""GET /v1/models: the base model and every adapter with a live version the caller may use."""

from __future__ import annotations

from ..routing import RoutingSnapshot
from .protocol import ModelCard, ModelList


def list_models(routing: RoutingSnapshot, created: int, tenant: str | None) -> ModelList:
    base = ModelCard(id=routing.base_model, created=created, owned_by="loraloop")
    adapters = [
        ModelCard(
            id=a.adapter_id,
            created=created,
            owned_by=a.adapter_id.split("/", 1)[0],
            parent=routing.base_model,
            live_version=a.version,
        )
        for a in routing.live_adapters(tenant)
    ]
    return ModelList(data=[base, *adapters])
