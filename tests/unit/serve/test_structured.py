"""The checks a client's JSON Schema passes before it becomes a grammar."""

from __future__ import annotations

import pytest

from loraloop.serve.errors import InvalidRequest
from loraloop.serve.openai.protocol import ResponseFormat
from loraloop.serve.openai.structured import check_schema, response_constraint
from loraloop.serve.settings import RequestLimits

LIMITS = RequestLimits(max_schema_bytes=2048, max_schema_depth=8)
TICKET = {"type": "object", "title": "Ticket",
          "properties": {"priority": {"enum": ["low", "high"]}, "tags": {
              "type": "array", "items": {"type": "string", "maxLength": 8}}},
          "required": ["priority"], "additionalProperties": False,
          "$defs": {"unused": {"anyOf": [{"type": "integer", "minimum": 0}, {"const": 1}]}}}


def refusal(schema, param: str = "response_format") -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, param, LIMITS)
    assert caught.value.param == param
    return caught.value.message


def test_a_supported_schema_passes_as_compact_json():
    assert check_schema(TICKET, "response_format", LIMITS).startswith('{"type":"object",')


def test_too_large_and_too_deep_schemas_are_refused():
    assert "limit is 2048" in refusal({"enum": ["x" * 100] * 30})
    deep: dict = {"type": "integer"}
    for _ in range(8):
        deep = {"type": "array", "items": deep}
    assert "deeper than 8" in refusal(deep)


def test_an_invalid_schema_is_refused_with_where():
    message = refusal({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "tools")
    assert "not a valid JSON Schema at properties/a/type" in message


@pytest.mark.parametrize(("keyword", "value"), [
    ("if", {}), ("patternProperties", {}), ("uniqueItems", True), ("contains", {}),
])
def test_keywords_structured_outputs_cannot_enforce_are_named(keyword, value):
    schema = {"type": "object", "properties": {"a": {"type": "array", keyword: value}}}
    assert f"'{keyword}' at /properties/a" in refusal(schema)


def test_property_names_are_not_mistaken_for_keywords():
    check_schema({"type": "object", "properties": {"if": {"type": "string"}}}, "tools", LIMITS)


def test_response_format_becomes_the_engine_constraint():
    def constraint(fields: dict):
        return response_constraint(ResponseFormat.model_validate(fields), LIMITS)

    assert constraint({"type": "text"}) is None
    assert constraint({"type": "json_object"}).kind == "json_object"
    schema = constraint({"type": "json_schema",
                         "json_schema": {"name": "t", "schema": TICKET, "strict": True}})
    assert (schema.kind, schema.param) == ("json_schema", "response_format")
