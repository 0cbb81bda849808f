"""Probes and metrics: /health (the process answers), /ready (the engine is warm), /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .state import ServerState, get_state

router = APIRouter()
StateDep = Annotated[ServerState, Depends(get_state)]


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    if state.service.ready and state.engine.is_healthy():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "starting" if not state.service.ready else "engine_down"},
                        status_code=503)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
