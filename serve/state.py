"""What one server process holds, built once at start-up and injected into routes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from loraloop.adapters.db import Database
from loraloop.adapters.registry import AdapterRegistry
from loraloop.adapters.tenants import TenantBook
from loraloop.adapters.training import TrainingBook

from .engine.protocol import Engine
from .feedback.service import FeedbackService
from .metrics import ServeMetrics
from .openai.service import GenerationService
from .registry_watch import RegistryWatcher
from .routing import RoutingTable
from .settings import ServeSettings
from .warmup import AdapterWarmer


@dataclass
class ServerState:
    settings: ServeSettings
    engine: Engine
    db: Database
    registry: AdapterRegistry
    tenants: TenantBook
    feedback: FeedbackService
    training: TrainingBook
    routes: RoutingTable
    watcher: RegistryWatcher
    warmer: AdapterWarmer
    service: GenerationService
    metrics: ServeMetrics
    started_at: int = field(default_factory=lambda: int(time.time()))
    start_failed: bool = False

    def engine_lost(self) -> bool:
        """The engine failed to start or died: only a restart helps."""
        return self.start_failed or (self.service.ready and not self.engine.is_healthy())


def get_state(request: Request) -> ServerState:
    return request.app.state.loraloop
