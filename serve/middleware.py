"""ASGI middleware at the HTTP edge: request body caps, per-request metrics and log lines,
and the last word on unexpected errors.

Plain ASGI rather than BaseHTTPMiddleware, so streamed responses and client-disconnect
detection pass through untouched. `RequestMetrics` attaches a fresh `RequestFacts` to the
ASGI scope before the app runs and reads it when the response is sent; authentication
records the caller in it, and the generation routes the adapter version that served. One
typed object under one key, so the two sides cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from .errors import error_body, internal_error
from .metrics import NO_ADAPTER, ServeMetrics

REQUEST_ID_HEADER = b"x-request-id"
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
logger = logging.getLogger(__name__)
access_log = logging.getLogger("loraloop.requests")

_FACTS_KEY = "loraloop.request_facts"


@dataclass
class RequestFacts:
    caller: str | None = None
    adapter: str = NO_ADAPTER
    version: str = NO_ADAPTER


def attach(scope: MutableMapping[str, Any]) -> RequestFacts:
    facts = RequestFacts()
    scope.setdefault("state", {})[_FACTS_KEY] = facts
    return facts


def facts_of(request: Request) -> RequestFacts:
    """The request's facts; outside the metrics middleware (admin routes), a throwaway."""
    return request.scope.get("state", {}).get(_FACTS_KEY) or RequestFacts()


async def _refuse_too_large(send, limit: int) -> None:
    body = error_body(
        f"The request body is larger than this server's limit of {limit} bytes.",
        "invalid_request_error",
        param=None,
        code="payload_too_large",
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class BodyLimit:
    """Refuses bodies over the cap before they are read: by Content-Length, or, for chunked
    bodies, as soon as the bytes received pass it. The upload routes the app names (path
    templates, as routes declare them) get the larger upload cap."""

    def __init__(
        self, app, *, max_bytes: int, max_upload_bytes: int, upload_routes: Iterable[str]
    ) -> None:
        self.app, self.max_bytes, self.max_upload_bytes = app, max_bytes, max_upload_bytes
        self.upload_paths = [compile_path(route)[0] for route in upload_routes]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = any(path.match(scope["path"]) for path in self.upload_paths)
        limit = self.max_upload_bytes if is_upload else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _refuse_too_large(send, limit)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


class BodyTooLarge(HTTPException):
    """An HTTP error, so that the framework's body parsing lets it through as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"The request body is larger than this server's limit of {limit} bytes."
        )


def _request_id(scope) -> bytes:
    """The client's X-Request-Id when it is a sane token (to join logs across services),
    otherwise a new one."""
    given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
    return given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex.encode()


class RequestMetrics:
    """Counts every /v1 request by endpoint, adapter, version and status, times it to the
    last byte sent (a stream included), and logs it once with its request id."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        started, status, request_id = perf_counter(), 500, _request_id(scope)
        facts = attach(scope)

        async def recorded(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            self._record(scope, facts, status, perf_counter() - started, request_id.decode())

    def _record(
        self, scope, facts: RequestFacts, status: int, seconds: float, request_id: str
    ) -> None:
        endpoint = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(endpoint, facts.adapter, facts.version, str(status)).inc()
        self.metrics.duration.labels(endpoint).observe(seconds)
        if status in (429, 503):
            self.metrics.rejected.labels("rate_limited" if status == 429 else "overloaded").inc()
        access_log.info(
            "%s %s %d",
            scope["method"],
            endpoint,
            status,
            extra={
                "event": "request",
                "request_id": request_id,
                "caller": facts.caller,
                "adapter": facts.adapter,
                "version": facts.version,
                "endpoint": endpoint,
                "status": status,
                "latency_ms": round(seconds * 1000, 1),
            },
        )


class ErrorBoundary:
    """The last word on an unexpected error: logged, and a sanitized 500 if nothing was sent.

    An exception handler for `Exception` would run in Starlette's outermost middleware, which
    sends the response and then re-raises, so the server also drops the client's keep-alive
    connection. Here the error stops, and the connection stays usable. A response already
    under way (a stream) cannot change its status: that error propagates and the connection
    closes, which is how the client learns the body is cut short.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body = internal_error()
            await JSONResponse(body, status_code=status)(scope, receive, send)
