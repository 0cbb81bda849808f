"""What a schema's grammar would cost to compile, bounded before anything compiles it.

Compiling is not linear in the schema's size: optional properties multiply the states of
an object, and nested counted repeats in a pattern multiply (`(a{1,200}){1,200}` is 40,000
copies of `a`). A schema over a bound is refused (400 naming the parameter) up front, so no
tenant's schema can hold the engine's compiler for long.
"""

from __future__ import annotations

import re

# Python's own regex parser: it reads a pattern without compiling it, in linear time.
# typeshed describes them under their old names (sre_constants, sre_parse), whose import
# warns since Python 3.11.
from re import _constants as sre  # type: ignore[attr-defined]  # noqa: PLC2701
from re import _parser as sre_parse  # type: ignore[attr-defined]  # noqa: PLC2701

from ..errors import InvalidRequest
from ..settings import RequestLimits

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


def check_cost(schema, param: str, limits: RequestLimits) -> None:
    properties, patterns = _tally(schema)
    if properties > limits.max_schema_properties:
        raise InvalidRequest(
            f"{param}: the schema has {properties} properties; structured outputs take at "
            f"most {limits.max_schema_properties} (over all its objects).",
            param=param,
        )
    for pattern in patterns:
        cost = repeat_cost(pattern, param)
        if cost > limits.max_schema_repeats:
            raise InvalidRequest(
                f"{param}: the pattern '{pattern[:80]}' repeats {cost} times when nested "
                f"counts multiply; the limit is {limits.max_schema_repeats}. Use smaller "
                "counts, or '*' and '+' where any count will do.",
                param=param,
            )


def _tally(node) -> tuple[int, list[str]]:
    properties, patterns = 0, []
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                properties += len(node["properties"])
            if isinstance(node.get("pattern"), str):
                patterns.append(node["pattern"])
            stack.extend(
                value
                for key, value in node.items()
                if key not in ("enum", "const", "default", "examples")
            )
    return properties, patterns


def repeat_cost(pattern: str, param: str) -> int:
    """The largest product of counted repeats nested in `pattern` (an open bound counts as
    its lower one: it compiles to a loop)."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidRequest(
            f"{param}: the pattern '{pattern[:80]}' is not a regular "
            f"expression structured outputs can use: {exc}.",
            param=param,
        ) from None
    try:
        return _cost(parsed)
    except _Lookaround:
        raise InvalidRequest(
            f"{param}: the pattern '{pattern[:80]}' has a lookahead or lookbehind, which "
            "structured outputs cannot enforce.",
            param=param,
        ) from None


class _Lookaround(Exception):
    pass


def _cost(items) -> int:
    worst = 1
    for op, value in items:
        if op in (sre.ASSERT, sre.ASSERT_NOT):  # the grammar backend ignores them
            raise _Lookaround
        if op in _REPEATS:
            low, high, inner = value
            count = low if high == sre.MAXREPEAT else high
            worst = max(worst, max(count, 1) * _cost(inner))
        elif op == sre.SUBPATTERN:
            worst = max(worst, _cost(value[-1]))
        elif op == sre.BRANCH:
            worst = max([worst, *(_cost(branch) for branch in value[1])])
    return worst
