"""The FastAPI application: wiring of settings, engine, routing and routes, and its lifespan.

The engine starts in the background so /health answers at once while the model loads;
/ready turns 200 once the engine is up and the adapters known at start-up are warm.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import health
from .admission import AdmissionGate
from .engine import Engine, create_engine
from .errors import install_error_handlers
from .metrics import ServeMetrics
from .openai import router as openai_router
from .openai.service import GenerationService
from .prompts import PromptRenderer
from .routing import RoutingSnapshot, RoutingTable
from .settings import ServeSettings
from .state import ServerState
from .warmup import AdapterWarmer

logger = logging.getLogger(__name__)


def build_state(settings: ServeSettings, engine: Engine) -> ServerState:
    routes = RoutingTable(
        RoutingSnapshot.from_directories(settings.base_model_name, settings.adapters)
    )
    renderer = PromptRenderer.load(settings.model, settings.max_model_len)
    warmer = AdapterWarmer(engine)
    admission = AdmissionGate(settings.max_pending_requests)
    service = GenerationService(engine, renderer, warmer, admission, settings.limits, routes)
    return ServerState(settings, engine, routes, warmer, service, ServeMetrics(admission, engine))


async def _start_engine(state: ServerState) -> None:
    try:
        await state.engine.start()
        await state.warmer.warm(state.routes.snapshot.live_adapters())
    except Exception:
        logger.exception("the engine failed to start; /health and /ready answer 503")
        state.start_failed = True
        return
    state.service.ready = True
    snapshot = state.routes.snapshot
    logger.info("ready: serving %s with %d adapters", snapshot.base_model, len(snapshot.live))


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    state = build_state(settings, engine or create_engine(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.create_task(_start_engine(state))
        try:
            yield
        finally:
            starting.cancel()
            await state.engine.shutdown()

    app = FastAPI(title="loraloop", version="0.1.0", lifespan=lifespan)
    app.state.loraloop = state
    install_error_handlers(app)
    app.include_router(openai_router.router)
    app.include_router(health.router)
    return app
