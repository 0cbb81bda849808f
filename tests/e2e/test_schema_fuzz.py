"""Schema fuzzing of the served OpenAPI document: whatever a client sends within (or just
outside) the documented shapes, and with invalid Unicode in every string of each body, the
server answers without a 5xx, and what it documents it returns."""

from __future__ import annotations

import json

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from ..conftest import ADMIN_HEADERS

EXAMPLES_PER_OPERATION = 25
# Text that schemathesis never generates (it keeps to what UTF-8 can encode), put into every
# string of a copy of each generated JSON body: lone surrogates of both halves, and NUL.
INVALID_TEXT = ("\ud800", "x\udfffy", "a\x00b")


def with_invalid_text(value, counter: list[int]):
    """`value` with every string replaced by one of INVALID_TEXT, in turn."""
    if isinstance(value, str):
        counter[0] += 1
        return INVALID_TEXT[counter[0] % len(INVALID_TEXT)]
    if isinstance(value, list):
        return [with_invalid_text(item, counter) for item in value]
    if isinstance(value, dict):
        return {key: with_invalid_text(item, counter) for key, item in value.items()}
    return value


def send_with_invalid_text(url: str, case) -> None:
    """The case again, every string of its body replaced, sent as JSON (escapes on the wire;
    schemathesis's own client cannot encode lone surrogates)."""
    body = with_invalid_text(case.body, [0])
    response = httpx.request(case.method, url + case.formatted_path, params=case.query,
                             headers={**case.headers, "Content-Type": "application/json"},
                             content=json.dumps(body), timeout=60)
    assert response.status_code < 500, f"{response.status_code} for {body}: {response.text}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


def fuzz(operation, url: str) -> int:
    """Send generated requests for one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        nonlocal sent
        sent += 1
        case.headers = {**(case.headers or {}), **ADMIN_HEADERS}
        if isinstance(case.body, dict) and "max_tokens" in case.body:
            case.body["max_tokens"] = 2  # generation is the slow path; the shape is the test
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance],
                               timeout=60)
        if isinstance(case.body, dict):
            send_with_invalid_text(url, case)

    run()
    return sent


def test_public_api_never_fails_on_fuzzed_input(vllm_server):
    schema = schemathesis.openapi.from_url(f"{vllm_server.url}/openapi.json")
    operations = [result.ok() for result in schema.include(path_regex=r"^/v1/")
                  .get_all_operations()]
    assert len(operations) >= 6  # chat, completions, models, feedback, batch, stats
    sent = {operation.label: fuzz(operation, vllm_server.url) for operation in operations}
    # Every operation was exercised; those with a request body many times over.
    assert all(count >= 1 for count in sent.values()) and sum(sent.values()) >= 100, sent
