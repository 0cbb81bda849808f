"""Strings in JSON answers: a schema's string constraints rewritten so that the grammar the
engine builds from them only admits valid JSON strings, or refused when it cannot.

The grammar backend (xgrammar) turns a string with `minLength`/`maxLength` into a bounded
repeat of a character class that admits raw control characters (U+0000 to U+001F), which
JSON forbids inside a string: the answer would not parse. A `pattern`, on the other hand, is
compiled in the backend's JSON-string mode, which never admits a quote, a backslash or a
control character. So a length-bounded string is handed to the grammar as a pattern of
`min` to `max` characters of `BOUNDED_CHAR` (the bound stays in the schema that the answer
is validated against):

- the answer is valid JSON and its length is bounded as asked, one character per character;
- such a string holds no quote, backslash or control character (no escapes at all), and
  none of the characters `BOUNDED_CHAR` leaves out (U+0800 to U+0FFF, beyond U+FFFF).

What the grammar cannot enforce is refused (400) rather than left to chance: a pattern
that needs one of those characters (it could never match), and a pattern or format combined
with a length bound (the backend drops the bound).
"""

from __future__ import annotations

import copy
import re

from ..errors import InvalidRequest

_LENGTHS = ("minLength", "maxLength")
# One character of a length-bounded string, as a regex class. Not `.`: for the code points
# U+0800 to U+0FFF the backend also admits overlong byte sequences (lead byte E0), which
# decode as three U+FFFD each and so break the bound (seen at temperature 1 through an
# adapter). Left out too: characters beyond U+FFFF (emoji), which a regex class cannot name.
BOUNDED_CHAR = r"[ -\u07ff\u1000-\ud7ff\ue000-\uffff]"
# The backend, with its compile cache on as the engine runs it, fails to build a repeat of
# more than 128 ("per_rule_fsm_hashes ... has_value() is false"; 160 fails, 128 builds): a
# longer bound is written as consecutive repeats of at most this many.
MAX_REPEAT = 128
_VALUES = ("enum", "const", "default", "examples")  # keywords whose values are not schemas
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
}
# In a pattern: a quote or control character, or an escape that means a backslash, a quote
# or a control character. Escapes are read as units, so `\\d` is a backslash then `d`.
_PATTERN_UNIT = re.compile(r"\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\.|.", re.DOTALL)
_UNWRITABLE_ESCAPES = re.compile(r'\\(?:[\\"nrtfv0c]|x[01][0-9a-fA-F]|u00[01][0-9a-fA-F])')


def for_grammar(schema: dict, param: str, max_bound: int) -> dict:
    """A copy of `schema` whose strings the grammar backend compiles to valid JSON.

    `max_bound`: the largest maxLength put in the grammar; above it the grammar leaves the
    length open (a bounded repeat that large is costly to compile) and only the validation
    of the finished answer holds it."""
    rewritten = copy.deepcopy(schema)
    _visit(rewritten, param, "", max_bound)
    _share_patterns(rewritten)
    return rewritten


def _share_patterns(root: dict) -> None:
    """Strings of the same pattern made one definition that each refers to: the backend
    compiles each pattern it meets anew (256 properties of `^.{0,40}$` took 4.2 s, one
    shared definition 0.06 s)."""
    found, stack = [], [value for key, value in root.items() if key not in _VALUES]
    while stack:  # every plain pattern string below the root, found before any is changed
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if (
                node.get("type") == "string"
                and isinstance(node.get("pattern"), str)
                and set(node) - _ANNOTATIONS == {"type", "pattern"}
            ):
                found.append(node)
            else:
                stack.extend(value for key, value in node.items() if key not in _VALUES)
    if not found:
        return
    definitions = root.setdefault("$defs", {})
    shared: dict[str, str] = {}  # pattern -> its definition's name
    for node in found:
        pattern = node["pattern"]
        if pattern not in shared:
            shared[pattern] = _free_name(definitions, len(shared))
            definitions[shared[pattern]] = {"type": "string", "pattern": pattern}
        node.clear()
        node["$ref"] = f"#/$defs/{shared[pattern]}"


def _free_name(definitions: dict, index: int) -> str:
    while f"string_{index}" in definitions:
        index += 1
    return f"string_{index}"


def _visit(node, param: str, where: str, max_bound: int) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _visit(item, param, f"{where}/{index}", max_bound)
        return
    if not isinstance(node, dict):
        return
    if _is_string(node):
        _rewrite_string(node, param, where, max_bound)
    for key, value in node.items():
        if key not in _VALUES:
            _visit(value, param, f"{where}/{key}", max_bound)


def _is_string(node: dict) -> bool:
    kind = node.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _rewrite_string(node: dict, param: str, where: str, max_bound: int) -> None:
    at = f" at {where}" if where else ""
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, param, at)
    bounded = any(key in node for key in _LENGTHS)
    if not bounded or "enum" in node or "const" in node:
        return
    for other in ("pattern", "format"):
        if other in node:
            raise InvalidRequest(
                f"{param}: a string{at} has both a {other} and a length bound, which "
                "structured outputs cannot enforce together; put the length in a pattern "
                "instead (e.g. '^[a-z]{1,40}$').",
                param=param,
            )
    low, high = node.pop("minLength", 0), node.pop("maxLength", None)
    if high is not None and high < low:
        raise InvalidRequest(
            f"{param}: a string{at} has maxLength {high} under its minLength "
            f"{low}; no string fits.",
            param=param,
        )
    if low > max_bound:
        raise InvalidRequest(
            f"{param}: a string{at} has minLength {low}; structured outputs "
            f"take at most {max_bound}.",
            param=param,
        )
    high = None if high is None or high > max_bound else high
    node["pattern"] = f"^{bounded_chars(low, high)}$"


def bounded_chars(low: int, high: int | None) -> str:
    """BOUNDED_CHAR from `low` to `high` times (None: no upper bound), as consecutive
    repeats of at most MAX_REPEAT each."""
    span, parts = (low if high is None else high), []
    while span > 0:
        size = min(MAX_REPEAT, span)
        least = min(low, size)
        parts.append(f"{BOUNDED_CHAR}{{{least},{size}}}")
        low, span = low - least, span - size
    if high is None:
        parts.append(f"{BOUNDED_CHAR}*")
    return "".join(parts) or f"{BOUNDED_CHAR}{{0}}"


def _check_pattern(pattern: str, param: str, at: str) -> None:
    for unit in _PATTERN_UNIT.findall(pattern):
        if (
            unit == '"'
            or (len(unit) == 1 and ord(unit) < 0x20)
            or _UNWRITABLE_ESCAPES.fullmatch(unit)
        ):
            raise InvalidRequest(
                f"{param}: the pattern{at} mentions {unit!r}; a string that follows a "
                "pattern in structured outputs never holds quotes, backslashes or control "
                "characters, so the pattern cannot mention them.",
                param=param,
            )
