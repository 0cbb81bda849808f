"""Finished structured answers checked against the schema the client sent, before they leave.

The grammar holds an answer to its schema while it is sampled, but a grammar is only as
faithful as its backend's translation of the schema (dates such as 9340-02-30 fit the
backend's date pattern; a length bound may be left to this check). A finished answer (or
tool call) that breaks its schema is therefore not sent as if it were valid: the request
fails with `InvalidStructuredOutput` (502, code `invalid_structured_output`), which a client
may retry, and the metric counts it by parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time

from jsonschema import FormatChecker
from jsonschema.validators import validator_for

from ..errors import InvalidStructuredOutput

# RFC 3339 shapes; the values are then checked as real dates and times.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
FORMATS = FormatChecker()


@FORMATS.checks("date", raises=ValueError)
def _is_date(value) -> bool:
    return not isinstance(value, str) or (
        bool(_DATE.fullmatch(value)) and date.fromisoformat(value) is not None
    )


@FORMATS.checks("time", raises=ValueError)
def _is_time(value) -> bool:
    return not isinstance(value, str) or (
        bool(_TIME.fullmatch(value)) and time.fromisoformat(_utc(value)) is not None
    )


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value) -> bool:
    if not isinstance(value, str):
        return True
    day, sep, clock = value.partition("T") if "T" in value else value.partition("t")
    return (
        bool(sep)
        and _is_date(day)
        and _is_time(clock)
        and datetime.fromisoformat(f"{day}T{_utc(clock)}") is not None
    )


def _utc(clock: str) -> str:
    return clock[:-1] + "+00:00" if clock[-1:] in "Zz" else clock


class SchemaCheck:
    """One JSON Schema, ready to judge JSON texts."""

    def __init__(self, schema: dict) -> None:
        self._validator = validator_for(schema)(schema, format_checker=FORMATS)

    def problem(self, text: str) -> str | None:
        """Why `text` is not a JSON value valid against the schema; None when it is."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"not JSON ({exc})"
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{error.message[:200]}{f' at {where}' if where else ''}"


@dataclass
class AnswerCheck:
    """What one request's finished answers must satisfy: its response_format schema, each
    tool's parameters; `violated(param)` is told of every breach (for the metric)."""

    content: SchemaCheck | None = None
    tools: dict[str, SchemaCheck] = field(default_factory=dict)
    violated: Callable[[str], None] = lambda param: None

    def content_of(self, text: str) -> None:
        if self.content is not None:
            self._judge(self.content.problem(text), "response_format", "the answer")

    def calls(self, calls: Iterable[tuple[str, str]]) -> None:
        """`calls`: (function name, arguments JSON) of each tool call in the answer."""
        for name, arguments in calls:
            check = self.tools.get(name)
            problem = f"no tool is named '{name}'" if check is None else check.problem(arguments)
            self._judge(problem, "tools", f"the arguments of a call to '{name}'")

    def _judge(self, problem: str | None, param: str, what: str) -> None:
        if problem is None:
            return
        self.violated(param)
        raise InvalidStructuredOutput(
            f"The model's answer broke the schema of {param}: {what}: {problem}. The "
            "answer was withheld; sending the request again usually succeeds.",
            param=param,
        )
