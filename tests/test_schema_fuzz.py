"""Schema fuzzing of the served OpenAPI document: whatever a client sends within (or just
outside) the documented shapes, the server answers without a 5xx, and what it documents it
returns."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from .conftest import ADMIN_HEADERS

EXAMPLES_PER_OPERATION = 25


def fuzz(operation) -> int:
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

    run()
    return sent


def test_public_api_never_fails_on_fuzzed_input(vllm_server):
    schema = schemathesis.openapi.from_url(f"{vllm_server.url}/openapi.json")
    operations = [result.ok() for result in schema.include(path_regex=r"^/v1/")
                  .get_all_operations()]
    assert len(operations) >= 6  # chat, completions, models, feedback, batch, stats
    sent = {operation.label: fuzz(operation) for operation in operations}
    # Every operation was exercised; those with a request body many times over.
    assert all(count >= 1 for count in sent.values()) and sum(sent.values()) >= 100, sent
