"""The FastAPI application: wiring of settings, registry, engine, routing and routes.

The engine starts in the background so /health answers at once while the model loads;
/ready turns 200 once the engine is up and every live and canary version (and both versions
of a rollout) is warm. From then on the routing snapshot follows the registry.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from loraloop.adapters.prompts import PromptRenderer
from loraloop.adapters.registry import Registry, open_registry
from loraloop.adapters.serving_view import read_serving_view
from loraloop.adapters.usage import UsageBook

from . import health
from .admin import adapters_router
from .admin import router as admin_router
from .admission import AdmissionGate
from .console import router as console_router
from .console.security import ConsoleHeaders
from .engine.factory import create_engine
from .engine.interface import Engine
from .errors import install_error_handlers
from .feedback import router as feedback_router
from .feedback.service import FeedbackService
from .metrics import ServeMetrics
from .middleware import BodyLimit, ErrorBoundary, RequestMetrics
from .openai import router as openai_router
from .openai.answer_plan import AnswerPlanner
from .openai.engine_inputs import EngineInputs
from .openai.service import GenerationService
from .registry_watch import RegistryWatcher
from .rollouts.counts import RolloutCountRecorder
from .rollouts.metrics import RolloutGauges
from .rollouts.shadow import ShadowRunner
from .rollouts.shadow_pairs import ShadowPairWriter
from .rollouts.traffic import RolloutTraffic
from .routing import CurrentRoutes, RoutingSnapshot
from .sessions import ConsoleSessions
from .settings import ServeSettings
from .state import ServerState
from .token_budget import TokenBudget
from .usage import UsageRecorder
from .warmup import AdapterWarmer

logger = logging.getLogger(__name__)
UPLOAD_OVERHEAD = 1 << 20  # multipart framing and form fields around the adapter files


def build_state(settings: ServeSettings, engine: Engine) -> ServerState:
    registry = open_registry(
        model=settings.model,
        aliases=[settings.base_model_name],
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        max_rank=settings.max_lora_rank,
        max_bytes=settings.max_adapter_bytes,
        dtype=settings.dtype,
    )
    db = registry.db
    view = read_serving_view(db, registry.adapters.base)
    routes = CurrentRoutes(
        RoutingSnapshot.from_view(settings.base_model_name, view, registry.store.path_of)
    )
    renderer = PromptRenderer.load(settings.model, settings.max_model_len)
    budget = (
        TokenBudget(settings.tenant_tokens_per_minute)
        if settings.tenant_tokens_per_minute
        else None
    )
    admission = AdmissionGate(settings.max_pending_requests, settings.max_tenant_requests, budget)
    metrics = ServeMetrics(admission, engine, routes, db, UsageRecorder(UsageBook(db)))
    warmer = AdapterWarmer(engine, metrics)
    gauges = RolloutGauges(registry.rollouts)
    gauges.show(view.rollouts)
    metrics.registry.register(gauges)
    watcher = RegistryWatcher(
        db,
        registry.store,
        routes,
        warmer,
        base=registry.adapters.base,
        poll_s=settings.registry_poll_s,
        rollout_gauges=gauges,
    )
    rollouts = _rollout_traffic(settings, engine, registry, warmer, metrics, routes)
    answers = AnswerPlanner(
        renderer.tokenizer,
        settings.limits,
        _tool_format(settings, renderer),
        metrics.invalid_structured_outputs,
    )
    service = GenerationService(
        engine,
        EngineInputs(renderer, settings.limits),
        answers,
        warmer,
        admission,
        routes,
        registry.feedback,
        metrics,
        rollouts,
    )
    return ServerState(
        settings,
        engine,
        registry,
        FeedbackService(registry.feedback, routes, metrics),
        routes,
        watcher,
        warmer,
        service,
        metrics,
        _console_sessions(settings, registry),
        rollouts,
    )


def _rollout_traffic(
    settings: ServeSettings,
    engine: Engine,
    registry: Registry,
    warmer: AdapterWarmer,
    metrics: ServeMetrics,
    routes: CurrentRoutes,
) -> RolloutTraffic:
    writer = ShadowPairWriter(registry.rollouts, retention_s=settings.shadow.retention_s)
    shadows = ShadowRunner(
        engine,
        warmer,
        writer,
        metrics.shadow_requests,
        settings.shadow,
        lambda adapter_id: routes.snapshot.rollouts.get(adapter_id),
    )
    return RolloutTraffic(
        RolloutCountRecorder(registry.rollouts), shadows, metrics.rollout_requests
    )


def _console_sessions(settings: ServeSettings, registry: Registry) -> ConsoleSessions:
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    return ConsoleSessions(registry.sessions, settings.console_idle_minutes * 60, admin_key)


def _tool_format(settings: ServeSettings, renderer: PromptRenderer):
    if settings.tool_call_parser is None:
        return None
    from .openai.tool_calls import ToolCallFormat  # vLLM's parsers: only when named

    return ToolCallFormat(settings.tool_call_parser, renderer.tokenizer)


async def _start_engine(state: ServerState) -> None:
    try:
        await state.engine.start()
        await state.watcher.start_warming()
    except Exception:
        logger.exception("the engine failed to start; /health and /ready answer 503")
        state.start_failed = True
        return
    state.service.ready = True
    snapshot = state.routes.snapshot
    logger.info("ready: serving %s with %d live adapters", snapshot.base_model, len(snapshot.live))
    await state.watcher.watch()


ENGINE_CHECK_S = 1.0


async def _watch_engine(state: ServerState) -> None:
    """Say once, loudly, that the engine is lost, and let the process's owner act on it."""
    while not state.engine_lost():
        await asyncio.sleep(ENGINE_CHECK_S)
    logger.error(
        "the engine is lost: requests answer 503 engine_unavailable and /health 503 "
        "until the process is restarted"
    )
    if state.on_engine_lost is not None:
        state.on_engine_lost()


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    state = build_state(settings, engine or create_engine(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        running = asyncio.create_task(_start_engine(state))
        watching = asyncio.create_task(_watch_engine(state))
        usage = state.metrics.usage
        assert usage is not None  # build_state gives the server's metrics a usage recorder
        counting = asyncio.create_task(usage.run())
        rollouts = state.rollouts
        shadowing = asyncio.create_task(rollouts.shadows.run())
        writing = [
            asyncio.create_task(rollouts.shadows.writer.run()),
            asyncio.create_task(rollouts.counts.run()),
        ]
        try:
            yield
        finally:
            for task in (running, watching, shadowing, counting, *writing):
                task.cancel()
            # Shadows in flight are abandoned; every writer flushes once more.
            await asyncio.gather(shadowing, counting, *writing, return_exceptions=True)
            await state.feedback.writer.close()  # what is queued is stored before exit
            await state.engine.shutdown()
            state.registry.db.dispose()

    app = FastAPI(title="loraloop", version="0.1.0", lifespan=lifespan)
    app.state.loraloop = state
    install_error_handlers(app)
    # Added last is outermost: metrics see every request, the 413s included, and the error
    # boundary sits innermost so that they also see the 500 it sends.
    app.add_middleware(ErrorBoundary)
    app.add_middleware(ConsoleHeaders)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_adapter_bytes + UPLOAD_OVERHEAD,
        upload_routes=[adapters_router.UPLOAD_ROUTE],
    )
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.include_router(openai_router.router)
    app.include_router(feedback_router.router)
    app.include_router(admin_router.router)
    app.include_router(health.router)
    app.include_router(console_router.router)
    app.mount(console_router.STATIC_ROUTE, console_router.static_files())
    return app
