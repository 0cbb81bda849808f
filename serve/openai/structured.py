"""JSON answers: `response_format` as a grammar the engine enforces, and the checks a client's
JSON Schema passes first (tool parameters included).

A schema is refused with a 400 naming the parameter when it is too large, too deep or too
costly to compile (it is compiled into a grammar per request, see schema_cost.py), when it is
not a valid JSON Schema, or when it uses a keyword or a combination the structured-output
backend cannot enforce (see json_strings.py): an answer would then only seem to follow it.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from ..engine.interface import OutputConstraint
from ..errors import InvalidRequest
from ..settings import RequestLimits
from .json_strings import for_grammar
from .protocol import ResponseFormat
from .schema_cost import check_cost

# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SUBSCHEMA = {"items", "additionalProperties", "not"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SUBSCHEMA_MAPS = {"properties", "$defs", "definitions"}
_CONSTRAINTS = {
    "type",
    "enum",
    "const",
    "required",
    "$ref",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
}
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "nullable",
}
SUPPORTED_KEYWORDS = _SUBSCHEMA | _SUBSCHEMA_LISTS | _SUBSCHEMA_MAPS | _CONSTRAINTS | _ANNOTATIONS
# Schemas that passed, as their grammar text: clients send the same few schemas again and
# again, and checking one against the meta-schema costs milliseconds of the event loop.
_CHECKED: OrderedDict[tuple[str, str, int], str] = OrderedDict()
_REMEMBERED = 256


def check_schema(schema: dict, param: str, limits: RequestLimits) -> str:
    """The schema as the grammar is built from it (compact JSON text, see `for_grammar`),
    once it passes; InvalidRequest naming `param` if not."""
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > limits.max_schema_bytes:
        raise InvalidRequest(
            f"{param}: the schema has {len(text.encode())} bytes; the limit is "
            f"{limits.max_schema_bytes}.",
            param=param,
        )
    _check_depth(schema, param, limits.max_schema_depth)
    # Before the meta-schema check, which takes about 1 s for 2,000 properties: the cheap
    # bounds refuse a costly schema first.
    check_cost(schema, param, limits)
    key = (param, text, limits.max_schema_repeats)
    if (grammar := _CHECKED.get(key)) is not None:
        _CHECKED.move_to_end(key)
        return grammar
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidRequest(
            f"{param}: not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}",
            param=param,
        ) from None
    _check_keywords(schema, param, "")
    grammar = json.dumps(
        for_grammar(schema, param, limits.max_schema_repeats),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    _CHECKED[key] = grammar
    if len(_CHECKED) > _REMEMBERED:
        _CHECKED.popitem(last=False)
    return grammar


def response_constraint(
    response_format: ResponseFormat | None, limits: RequestLimits
) -> OutputConstraint | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return OutputConstraint("json_object")
    assert response_format.json_schema is not None  # ResponseFormat's validator: with its type
    schema = response_format.json_schema.json_schema
    return OutputConstraint("json_schema", check_schema(schema, "response_format", limits))


def _check_depth(node, param: str, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise InvalidRequest(f"{param}: the schema nests deeper than {limit} levels.", param=param)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        _check_depth(child, param, limit, depth + 1)


def _check_keywords(schema, param: str, where: str) -> None:
    if not isinstance(schema, dict):  # true / false: a schema too
        return
    for keyword, value in schema.items():
        if keyword not in SUPPORTED_KEYWORDS:
            raise InvalidRequest(
                f"{param}: the schema keyword '{keyword}'{f' at {where}' if where else ''} "
                "is not supported by structured outputs; supported: "
                f"{', '.join(sorted(SUPPORTED_KEYWORDS))}.",
                param=param,
            )
        path = f"{where}/{keyword}"
        if keyword in _SUBSCHEMA:
            _check_keywords(value, param, path)
        elif keyword in _SUBSCHEMA_LISTS:
            for index, item in enumerate(value):
                _check_keywords(item, param, f"{path}/{index}")
        elif keyword in _SUBSCHEMA_MAPS:
            for name, item in value.items():
                _check_keywords(item, param, f"{path}/{name}")
