"""A training policy being set: parsed and checked off the event loop.

Checking a policy can take a while (its patterns are compiled in a child process with a time
limit), so the route hands the raw body here, on a worker thread, instead of letting the
framework validate it on the event loop, where it would stall every other request.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from loraloop.adapters.training_policy import TrainingPolicy

from ..errors import InvalidRequest, validation_error

# The request body as OpenAPI documents it: the policy's own schema.
POLICY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TrainingPolicy"}}
        },
    }
}


def admit_policy(raw: bytes, judge_key_variables: tuple[str, ...]) -> TrainingPolicy:
    """The policy in `raw`, or InvalidRequest naming every field refused."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    try:
        return TrainingPolicy.admitted(body, judge_key_variables=judge_key_variables)
    except ValidationError as exc:
        problems = [{**p, "loc": ("body", *_field_path(body, p["loc"]))} for p in exc.errors()]
        raise validation_error(RequestValidationError(problems)) from None


def _field_path(body: Any, loc: tuple) -> tuple:
    """`loc` as the client wrote the fields: without the union member pydantic names in it
    (judge.llm.api_key_env is the client's judge.api_key_env). A segment the body has no
    key for is such a member, unless it is the last (a missing field)."""
    path, node = [], body
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part not in node and not last:
            continue
        path.append(part)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part]
                if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
                else None
            )
        )
    return tuple(path)
