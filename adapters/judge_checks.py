"""What a judge policy's fields must show beyond their shape, checked when it is validated.

Two occasions: a policy being set (`Admission` as pydantic's validation context, carrying
the operator's settings; expensive checks run then, off the event loop), and a stored policy
read back (no context: only what is cheap and independent of settings, so that reading a
policy never stalls or depends on who reads it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import regex
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import ValidationInfo

from .judge_keys import key_refusal
from .patterns import compile_refusals, cost_refusal

# Deepest nesting of objects and arrays in a rules judge's JSON Schema (as for request
# schemas): jsonschema checks a schema recursively, and Python's stack is finite.
MAX_SCHEMA_DEPTH = 32


@dataclass(frozen=True)
class Admission:
    """A policy being set: the operator's settings it is checked against."""

    judge_key_variables: tuple[str, ...]


def _admission(info: ValidationInfo) -> Admission | None:
    return info.context if isinstance(info.context, Admission) else None


def pattern_compiles(pattern: str, info: ValidationInfo) -> str:
    """The static cost bound always; compiled here only for a stored policy (which passed
    the bounded compile when it was set); being set, `patterns_compile` compiles it."""
    if why := cost_refusal(pattern):
        raise ValueError(why)
    if _admission(info) is None:
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return pattern


def patterns_compile(patterns: list[str], info: ValidationInfo) -> list[str]:
    """Being set: every pattern compiles within the time and memory bound."""
    if _admission(info) is not None and patterns:
        refused = compile_refusals(patterns)
        if refused:
            raise ValueError("; ".join(refused.values()))
    return patterns


def is_schema(schema: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    _check_depth(schema)
    patterns, unevaluated = _schema_patterns(schema)
    if unevaluated and any(True for _ in _pattern_properties(schema)):
        # jsonschema matches patternProperties for unevaluatedProperties with Python's `re`,
        # which has no time limit; the judge bounds every other pattern search.
        raise ValueError(
            "unevaluatedProperties together with patternProperties is not "
            "supported by the rules judge; use additionalProperties"
        )
    refused = [why for pattern in patterns if (why := cost_refusal(pattern))]
    if refused:
        raise ValueError("; ".join(refused))
    patterns_compile(patterns, info)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    return schema


def _check_depth(schema: Any) -> None:
    # Iterative: a schema nested thousands of levels must not exhaust the stack here either.
    pending = [(schema, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        pending.extend((child, depth + 1) for child in children)


def _pattern_properties(schema: Any) -> Iterator[str]:
    for node in _objects(schema):
        if isinstance(node.get("patternProperties"), dict):
            yield from node["patternProperties"]


def _schema_patterns(schema: Any) -> tuple[list[str], bool]:
    """Every regular expression the schema holds (`pattern`, `patternProperties`' names),
    and whether it uses unevaluatedProperties anywhere."""
    patterns, unevaluated = list(_pattern_properties(schema)), False
    for node in _objects(schema):
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        unevaluated = unevaluated or "unevaluatedProperties" in node
    return patterns, unevaluated


def _objects(schema: Any) -> Iterator[dict[str, Any]]:
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            yield node
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def key_variable_allowed(name: str | None, info: ValidationInfo) -> str | None:
    """Being set: the variable is one the operator lets judges use."""
    admission = _admission(info)
    if (
        name is not None
        and admission is not None
        and (why := key_refusal(name, admission.judge_key_variables))
    ):
        raise ValueError(why)
    return name
