"""Schema fuzzing of the served OpenAPI document: whatever a client sends within (or just
outside) the documented shapes, and with invalid Unicode in every string of each body, the
server answers without a 5xx, and what it documents it returns."""

from __future__ import annotations

import json

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
    response = httpx.request(
        case.method,
        url + case.formatted_path,
        params=case.query,
        headers={**case.headers, "Content-Type": "application/json"},
        content=json.dumps(body),
        timeout=60,
    )
    assert response.status_code < 500, f"{response.status_code} for {body}: {response.text}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


def fuzz(operation, url: str) -> int:
    """Send generated requests for one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        nonlocal sent
        sent += 1
        case.headers = {**(case.headers or {}), **ADMIN_HEADERS}
        if isinstance(case.body, dict) and "max_tokens" in case.body:
            case.body["max_tokens"] = 2  # generation is the slow path; the shape is the test
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=60)
        if isinstance(case.body, dict):
            send_with_invalid_text(url, case)

    run()
    return sent


def test_public_api_never_fails_on_fuzzed_input(vllm_server):
    schema = schemathesis.openapi.from_url(f"{vllm_server.url}/openapi.json")
    operations = [
        result.ok() for result in schema.include(path_regex=r"^/v1/").get_all_operations()
    ]
    assert len(operations) >= 6  # chat, completions, models, feedback, batch, stats
    sent = {operation.label: fuzz(operation, vllm_server.url) for operation in operations}
    # Every operation was exercised; those with a request body many times over.
    assert all(count >= 1 for count in sent.values()) and sum(sent.values()) >= 100, sent


# Structured outputs and tools: the OpenAPI document allows any JSON Schema object and any
# number, so the generic fuzzing above rarely reaches the grammar compiler or the tool
# parser. These strategies aim at them with schemas and values near and past every bound.
JSON_LEAVES = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8)
SCHEMA_KEYWORDS = st.sampled_from(
    [
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "const",
        "anyOf",
        "minimum",
        "maxLength",
        "pattern",
        "additionalProperties",
        "$ref",
        "format",
        "if",
        "not",
        "minItems",
    ]
)
TYPES = st.sampled_from(
    ["object", "string", "integer", "number", "boolean", "array", "null", "nonsense"]
)


def schemas() -> st.SearchStrategy:
    return st.recursive(
        st.fixed_dictionaries({"type": TYPES}) | st.booleans(),
        lambda children: st.dictionaries(
            SCHEMA_KEYWORDS,
            children
            | JSON_LEAVES
            | TYPES
            | st.lists(children | st.text(max_size=4), max_size=3)
            | st.dictionaries(st.text(max_size=4), children, max_size=3),
            max_size=4,
        ),
        max_leaves=12,
    )


def tool_definitions() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "type": st.just("function") | st.text(max_size=4),
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["get_weather", "f", "bad name", ""])},
                optional={"parameters": schemas(), "strict": st.booleans()},
            ),
        }
    )


GENERATION_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
            optional={
                "json_schema": st.fixed_dictionaries(
                    {"name": st.sampled_from(["t", "bad name"]), "schema": schemas()},
                    optional={"strict": st.booleans()},
                )
            },
        ),
        "tools": st.lists(tool_definitions(), max_size=3),
        "tool_choice": st.sampled_from(["none", "auto", "required", "any"])
        | st.fixed_dictionaries(
            {
                "type": st.just("function"),
                "function": st.fixed_dictionaries(
                    {"name": st.sampled_from(["get_weather", "missing"])}
                ),
            }
        ),
        "parallel_tool_calls": st.booleans() | st.none(),
        "presence_penalty": st.floats(-3, 3) | st.none(),
        "frequency_penalty": st.floats(-3, 3) | st.just(float("nan")) | st.none(),
        "repetition_penalty": st.floats(-1, 3) | st.none(),
        "logit_bias": st.dictionaries(
            st.sampled_from(["0", "5", "-1", "99999999", "x", "1e3"]),
            st.floats(-150, 150) | st.integers(-150, 150),
            max_size=4,
        ),
        "top_k": st.integers(-3, 10**7) | st.none(),
        "min_p": st.floats(-1, 2) | st.none(),
    },
)


def test_structured_outputs_and_tools_never_fail_on_fuzzed_values(vllm_server):
    url = f"{vllm_server.url}/v1/chat/completions"
    statuses: list[int] = []

    @given(fields=GENERATION_FIELDS, stream=st.booleans())
    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(fields, stream) -> None:
        body = {
            "model": "acme/support",
            "max_tokens": 2,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
            **fields,
        }
        # json.dumps writes NaN as the bare word some clients send; httpx's encoder would not.
        response = httpx.post(
            url,
            content=json.dumps(body),
            timeout=60,
            headers={**ADMIN_HEADERS, "Content-Type": "application/json"},
        )
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{response.status_code} for {body}: {response.text}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) >= {"message", "type", "param", "code"}

    run()
    # Both kinds were sent: requests refused for their values, and requests served.
    assert {200, 400} <= set(statuses), statuses
