"""Probes and metrics: /health (the process answers), /ready (the engine is warm), /metrics
(behind the metrics token, when the operator sets one)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .auth import metrics_scraper
from .metrics import exposition
from .state import ServerState, get_state

router = APIRouter()
StateDep = Annotated[ServerState, Depends(get_state)]


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    # 200 while the model loads (a liveness probe must not kill a slow start), 503 once the
    # engine is lost, so the orchestrator restarts the process.
    if state.engine_lost():
        return JSONResponse({"status": "engine_lost"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    if state.engine_lost():
        return JSONResponse({"status": "engine_lost"}, status_code=503)
    if not state.service.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    if state.routes.registry_lost_at is not None:
        # Still ready: inference goes on from the last routing snapshot, and taking the
        # replica out of its Service would turn a registry outage into a serving outage.
        return JSONResponse(
            {
                "status": "degraded",
                "registry": "unavailable",
                "unavailable_s": round(time.monotonic() - state.routes.registry_lost_at, 1),
            }
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", dependencies=[Depends(metrics_scraper)])
async def metrics(state: StateDep) -> Response:
    # Off the event loop: registry-wide counts are read from the database.
    text = await asyncio.to_thread(
        exposition, state.metrics.registry, adapter_names=state.settings.metrics.adapter_names
    )
    return Response(text, media_type=CONTENT_TYPE_LATEST)
