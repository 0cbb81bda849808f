"""One error taxonomy for the whole server, and its single mapping to OpenAI's error shape.

Code raises these; `install_error_handlers` turns them into
`{"error": {"message", "type", "param", "code"}}` with the right status. Anything else is a
bug: it is logged with its traceback and the client gets a sanitized 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraloop.adapters import errors as registry

logger = logging.getLogger(__name__)


class LoraloopError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(LoraloopError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class AdapterNotFound(LoraloopError):
    """Unknown and foreign adapters look the same, so tenants cannot probe for names."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str, why: str | None = None) -> None:
        """`why`: what only an operator may be told (a tenant learns nothing more)."""
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it"
            + (f": {why}. " if why else ". ")
            + "GET /v1/models lists the models you can use.",
            param="model",
        )


class Unauthenticated(LoraloopError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(LoraloopError):
    status_code = 403
    error_type = "invalid_request_error"
    code = "forbidden"


class CsrfRefused(Forbidden):
    """A change sent with a console session cookie but without the session's CSRF token."""

    code = "csrf_token_invalid"


class AdapterUnavailable(LoraloopError):
    """The adapter is known but its weights could not be loaded into the engine."""

    status_code = 500
    error_type = "server_error"
    code = "adapter_load_failed"


class NonFiniteOutput(LoraloopError):
    """The model computed NaN or infinity for a request: that request fails, no other does."""

    status_code = 500
    error_type = "server_error"
    code = "non_finite_output"


class InvalidStructuredOutput(LoraloopError):
    """A finished answer that breaks the schema its grammar was built from: the engine's
    grammar let it through. The client gets this instead of an answer it cannot use, and may
    send the request again."""

    status_code = 502
    error_type = "server_error"
    code = "invalid_structured_output"


class Overloaded(LoraloopError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RateLimited(Overloaded):
    """One tenant over its share: the server itself still has room for others."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class EngineUnavailable(Overloaded):
    code = "engine_unavailable"


# Registry errors, as the admin API reports them: (status, code).
_REGISTRY_STATUS: dict[type[registry.RegistryError], tuple[int, str]] = {
    registry.RegistryUnavailable: (503, "registry_unavailable"),
    registry.StorageFull: (507, "insufficient_storage"),
    registry.NotFound: (404, "not_found"),
    registry.Conflict: (409, "conflict"),
    registry.AdapterInvalid: (400, "adapter_invalid"),
    registry.InvalidArgument: (400, "invalid_value"),
    registry.ContextLengthExceeded: (400, "context_length_exceeded"),  # before its base
    registry.PromptRejected: (400, "invalid_value"),
}


def error_body(message: str, error_type: str, *, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _response(err: LoraloopError) -> JSONResponse:
    body = error_body(err.message, err.error_type, param=err.param, code=err.code)
    return JSONResponse(body, status_code=err.status_code, headers=err.headers())


# How long a client should wait before sending again what the registry could not take.
REGISTRY_RETRY_AFTER_S = 5


def registry_error_headers(err: registry.RegistryError) -> dict[str, str]:
    if isinstance(err, registry.RegistryUnavailable):
        return {"Retry-After": str(REGISTRY_RETRY_AFTER_S)}
    return {}


def _registry_error(err: registry.RegistryError) -> tuple[int, dict]:
    status, code = next(
        (mapped for kind, mapped in _REGISTRY_STATUS.items() if isinstance(err, kind)),
        (500, "internal_error"),
    )
    param = err.param if isinstance(err, registry.PromptRejected) else None
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    body = error_body(err.message, error_type, param=param, code=code)
    if isinstance(err, registry.AdapterInvalid):
        body["error"]["problems"] = err.problems  # every problem, for tools to show one by one
    return status, body


def internal_error() -> tuple[int, dict]:
    return 500, error_body(
        "The server had an internal error.", "server_error", param=None, code="internal_error"
    )


def describe_error(exc: Exception) -> tuple[int, dict]:
    """(status, body) for any error: where one response carries many results (batches)."""
    if isinstance(exc, LoraloopError):
        return exc.status_code, error_body(
            exc.message, exc.error_type, param=exc.param, code=exc.code
        )
    if isinstance(exc, registry.RegistryError):
        return _registry_error(exc)
    logger.error("unhandled error in a batch line", exc_info=exc)
    return internal_error()


# pydantic names the union member it tried inside the location ("stop.list[str].0",
# "content.function-after[encodable(), str]"); clients know fields, not members.
_UNION_MEMBER = re.compile(r"[\[\](), -]|^(str|int|float|bool|list|dict|none)$")


def _validation_param(loc: tuple) -> str | None:
    # loc is ("body", "messages", 0, "content"): drop the location kind, join the rest.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else []
    return ".".join(p for p in parts if not _UNION_MEMBER.search(p)) or None


def _relevant(problems: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """A value that fits no member of a union fails each member; where one member explains
    what is wrong with the value itself, the others' "should be a valid X" is noise."""
    specific = [p for p in problems if not str(p.get("type", "")).endswith("_type")]
    return specific or problems


def validation_error(
    exc: RequestValidationError | ValidationError, location: str | None = None
) -> InvalidRequest:
    """`location`: where a plain pydantic error's fields sit in the request ("body")."""
    problems: Sequence[Mapping[str, Any]] = [
        {**p, "loc": (location, *p["loc"])} if location else p for p in exc.errors()
    ]
    first: Mapping[str, Any] = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON: " + first["msg"] + ".")
    problems = _relevant(problems)
    described = "; ".join(
        dict.fromkeys(
            f"{_validation_param(tuple(p['loc'])) or 'body'}: {p['msg']}" for p in problems
        )
    )
    return InvalidRequest(described, param=_validation_param(tuple(problems[0]["loc"])))


def install_error_handlers(app: FastAPI) -> None:
    """Every LoraloopError and registry error as its HTTP status. Anything else is caught by
    middleware.ErrorBoundary, which answers internal_error()."""

    @app.exception_handler(LoraloopError)
    async def _known(_: Request, exc: LoraloopError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(registry.RegistryError)
    async def _registry(_: Request, exc: registry.RegistryError) -> JSONResponse:
        status, body = _registry_error(exc)
        return JSONResponse(body, status_code=status, headers=registry_error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(str(exc.detail), error_type, param=None, code=None)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
