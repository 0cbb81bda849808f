"""What one server process holds, built once at start-up and injected into routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from loraloop.adapters.registry import Registry

from .engine.interface import Engine
from .metrics import ServeMetrics
from .registry_watch import RegistryWatcher
from .rollouts.traffic import RolloutTraffic
from .routing import CurrentRoutes
from .sessions import ConsoleSessions
from .settings import ServeSettings
from .sign_ins import SignInThrottle
from .warmup import AdapterWarmer

if TYPE_CHECKING:  # the feature packages' routes import this module; app.py wires them in
    from .feedback.service import FeedbackService
    from .openai.service import GenerationService


@dataclass
class ServerState:
    settings: ServeSettings
    engine: Engine
    registry: Registry
    feedback: FeedbackService
    routes: CurrentRoutes
    watcher: RegistryWatcher
    warmer: AdapterWarmer
    service: GenerationService
    metrics: ServeMetrics
    sessions: ConsoleSessions
    rollouts: RolloutTraffic  # rollout counts and shadow answers, with their writers
    sign_ins: SignInThrottle = field(default_factory=SignInThrottle)  # console guessing
    started_at: int = field(default_factory=lambda: int(time.time()))
    start_failed: bool = False
    # Called once when the engine is lost; the command line sets it to stop the server.
    on_engine_lost: Callable[[], None] | None = None

    def engine_lost(self) -> bool:
        """The engine failed to start or died: only a restart helps."""
        return self.start_failed or (self.service.ready and not self.engine.is_healthy())


# The request dependencies are `async def` although they never wait: FastAPI runs a plain
# `def` dependency on a worker thread, and those hand-offs cost more than the work.
async def get_state(request: Request) -> ServerState:
    return request.app.state.loraloop
