"""POST /v1/feedback/batch: JSON lines in, one result per line out, all lines in one commit.

Every line is parsed and checked on its own (a bad line costs only itself), then the good
ones go to the writer together, so a batch of a thousand lines is one transaction rather
than a thousand.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from loraloop.adapters.feedback import Outcome, Submission

from ..errors import InvalidRequest, describe_error, validation_error
from .protocol import BatchLineResult, BatchResult, FeedbackPublic, FeedbackRequest
from .service import FeedbackService


async def store_lines(
    service: FeedbackService, tenant: str | None, lines: list[tuple[int, str]]
) -> BatchResult:
    """`lines`: (line number, text) of the non-blank lines, in order."""
    results: dict[int, BatchLineResult] = {}
    prepared: list[tuple[int, Submission]] = []
    for number, text in lines:
        try:
            prepared.append((number, await _prepare(service, tenant, text)))
        except Exception as exc:  # each line gets its own result
            results[number] = _refused(number, exc)
    outcomes = await service.store([s for _, s in prepared]) if prepared else []
    for (number, _), outcome in zip(prepared, outcomes, strict=True):
        results[number] = _stored(number, outcome)
    data = [results[number] for number, _ in lines]
    created = sum(r.status in (200, 201) for r in data)
    return BatchResult(created=created, failed=len(data) - created, data=data)


async def _prepare(service: FeedbackService, tenant: str | None, text: str) -> Submission:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The line is not JSON: {exc.msg}.") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("Each line must be a JSON object.")
    key = fields.pop("idempotency_key", None)
    try:
        body = FeedbackRequest.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, location="body") from None
    return await service.prepare(body, tenant, key)


def _stored(number: int, outcome: Outcome) -> BatchLineResult:
    if isinstance(outcome, Exception):
        return _refused(number, outcome)
    record, replayed = outcome
    return BatchLineResult(
        line=number, status=200 if replayed else 201, feedback=FeedbackPublic.model_validate(record)
    )


def _refused(number: int, exc: Exception) -> BatchLineResult:
    # Unknown errors stay sanitized (describe_error logs them and answers a plain 500).
    status, error = describe_error(exc)
    return BatchLineResult(line=number, status=status, error=error["error"])
