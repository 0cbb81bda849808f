"""What a request's answers may be and must satisfy: the tools the model may call (their
grammar and the reader of its calls), the check each finished answer passes (the tools'
parameters, or response_format's schema), and a grammar proven to compile before the
engine is given it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prometheus_client import Counter

from ..engine.interface import OutputConstraint
from ..errors import InvalidRequest
from ..settings import RequestLimits
from .answer_check import AnswerCheck, SchemaCheck
from .grammar_gate import GrammarGate
from .protocol import ChatCompletionRequest, NamedToolChoice, SamplingFields
from .structured import check_schema

if TYPE_CHECKING:  # vLLM's parsers load only where an operator names a tool-call format
    from .tool_calls import ToolCallFormat, ToolCallPlan


class AnswerPlanner:
    def __init__(
        self,
        tokenizer,
        limits: RequestLimits,
        tool_format: ToolCallFormat | None,
        invalid_outputs: Counter,
    ) -> None:
        """`invalid_outputs`: finished answers that broke their schema, by parameter."""
        self.limits, self.tool_format, self.invalid_outputs = limits, tool_format, invalid_outputs
        self.grammars = GrammarGate(tokenizer, limits.max_schema_compile_s)

    def tools(self, request: ChatCompletionRequest) -> ToolCallPlan | None:
        """How the request's tools constrain sampling and are read back; None when the model
        may not call any."""
        tools = request.tools or ()
        if len(tools) > self.limits.max_tools:
            raise InvalidRequest(
                f"At most {self.limits.max_tools} tools per request.", param="tools"
            )
        grammars = {
            tool.function.name: json.loads(
                check_schema(tool.function.parameters, "tools", self.limits)
            )
            for tool in tools
            if tool.function.parameters is not None
        }
        _check_tool_choice(request)
        if not request.calls_tools:
            return None
        if self.tool_format is None:
            raise InvalidRequest(
                "This server reads no tool calls for its base model: an operator names the "
                "model's format with --tool-call-parser.",
                param="tools",
            )
        return self.tool_format.plan(request, grammars)

    def check(self, request: SamplingFields, *, tools: bool) -> AnswerCheck | None:
        """What the answers must satisfy: the tools' parameters when the model may call
        them (their grammar covers the answer), response_format otherwise."""
        count = self.invalid_outputs
        check = AnswerCheck(violated=lambda param: count.labels(param).inc())
        if tools and isinstance(request, ChatCompletionRequest):
            check.tools = {
                tool.function.name: SchemaCheck(tool.function.parameters or {})
                for tool in request.tools or ()
            }
            return check
        response_format = request.response_format
        if response_format is None or response_format.type == "text":
            return None
        # json_schema comes with type json_schema, and only there (ResponseFormat's validator).
        check.content = SchemaCheck(
            {"type": "object"}
            if response_format.json_schema is None
            else response_format.json_schema.json_schema
        )
        return check

    async def check_grammar(self, constraint: OutputConstraint | None, tenant: str | None) -> None:
        """Refuse (400) a grammar that does not compile in time, before the engine sees it."""
        await self.grammars.check(constraint, tenant)


def _check_tool_choice(request: ChatCompletionRequest) -> None:
    names = [tool.function.name for tool in request.tools or ()]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: function names must be unique.", param="tools")
    choice = request.tool_choice
    if choice not in (None, "none", "auto") and not names:
        raise InvalidRequest(
            "tool_choice: a tool call is required, but no tools are given.", param="tool_choice"
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice: no tool is named '{choice.function.name}'; the tools are: "
            f"{', '.join(names)}.",
            param="tool_choice",
        )
