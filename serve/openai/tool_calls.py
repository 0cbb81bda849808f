"""Tool calls in the base model's own format, read and enforced by vLLM's parser of that name.

Every model family writes tool calls its own way (Hermes `<tool_call>` JSON, Llama's JSON,
Mistral's `[TOOL_CALLS]`...). The operator names the format for the base model with
`--tool-call-parser`, as vLLM names them; vLLM's parser then does both halves:

- before sampling, it turns `tools`, `tool_choice` and `parallel_tool_calls` into a grammar
  (a structural tag): `required` and a named function force a call, and every call's
  arguments follow the function's parameter schema, so a call always parses. Under `auto`
  the model writes freely until it opens a call; the call itself is then held to the schema.
- after sampling, it reads the calls out of the text, whole or as streamed deltas; calls
  wrapped in tags (Hermes') are read as JSON instead (tagged_calls.py), whole or streamed.

The parser works on vLLM's own request type, so the (already validated) request is handed to
it in that shape; nothing else of vLLM's HTTP layer is used.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as ParserRequest,
)
from vllm.parser.abstract_parser import Parser
from vllm.parser.parser_manager import ParserManager

from ..engine.interface import OutputConstraint
from ..errors import InvalidRequest
from .protocol import (
    ChatCompletionRequest,
    FunctionCallDelta,
    OutputFunctionCall,
    OutputToolCall,
    ToolCallDelta,
)
from .tagged_calls import CallPart, TaggedCallStream, tagged_calls, tags_of

# Each call's arguments follow its function's parameter schema, as if every tool were sent
# with strict: true (vLLM's --tool-strict-level parameter): a call that does not parse is
# no use to the client, and the schema is what the client said a call must look like.
TOOL_STRICT_LEVEL = "parameter"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallFormat:
    """One base model's tool-call format: vLLM's parser class for it, and its tokenizer."""

    def __init__(self, parser_name: str, tokenizer) -> None:
        try:
            parser = ParserManager.get_parser(
                tool_parser_name=parser_name,
                enable_auto_tools=True,
                tool_strict_level=TOOL_STRICT_LEVEL,
                tokenizer=tokenizer,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"tool-call parser '{parser_name}': {exc}") from exc
        if parser is None:  # what vLLM answers when the name gives it neither tools nor reasoning
            raise ValueError(f"tool-call parser '{parser_name}': vLLM built no parser for it")
        self._parser = parser
        self._tokenizer = tokenizer

    def plan(self, request: ChatCompletionRequest, parameters: dict[str, dict]) -> ToolCallPlan:
        """`parameters`: each function's parameter schema as the grammar is built from it
        (see structured.check_schema)."""
        wire = request.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            include={
                "model",
                "messages",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "response_format",
            },
        )
        wire.setdefault("tool_choice", "auto")
        for tool in wire.get("tools", ()):
            function = tool["function"]
            if function["name"] in parameters:
                function["parameters"] = parameters[function["name"]]
        try:
            parser_request = ParserRequest.model_validate(wire)
        except ValidationError as exc:
            raise InvalidRequest(f"tools: {exc.errors()[0]['msg']}", param="tools") from exc
        adjusted = self.new_parser(parser_request).adjust_request(parser_request)
        if not isinstance(adjusted, ParserRequest):  # vLLM returns the kind of request it took
            raise TypeError(f"vLLM's parser turned a chat request into {type(adjusted)}")
        return ToolCallPlan(self, adjusted)

    def new_parser(self, request: ParserRequest) -> Parser:
        tools = request.tools  # vLLM types it as a list of one tool kind, its parsers a list of all
        return self._parser(self._tokenizer, tools)  # type: ignore[arg-type]  # list is invariant


@dataclass
class ToolCallPlan:
    """What one request's tools mean for sampling, and a parser per choice for the output."""

    format: ToolCallFormat
    request: ParserRequest

    @property
    def constraint(self) -> OutputConstraint | None:
        structured = self.request.structured_outputs
        if structured is None:
            return None
        if structured.structural_tag is not None:
            return OutputConstraint(
                "structural_tag", _compact(structured.structural_tag), param="tools"
            )
        return OutputConstraint("json_schema", json.dumps(structured.json), param="tools")

    @property
    def skip_special_tokens(self) -> bool:
        return self.request.skip_special_tokens

    def reader(self, prompt_ids: list[int]) -> ToolCallReader:
        return ToolCallReader(self.format.new_parser(self.request), self.request, prompt_ids)


class ToolCallReader:
    """Reads one choice's tool calls: from the whole text, or delta by delta when streamed."""

    def __init__(self, parser, request: ParserRequest, prompt_ids: list[int]) -> None:
        self._parser, self._request, self._prompt_ids = parser, request, prompt_ids
        self._ids: dict[int, str] = {}  # streamed call index -> the id sent with its first part
        tags = tags_of(parser.tool_parser)
        self._tagged = TaggedCallStream(*tags) if tags is not None else None
        self.called = False

    def whole(self, text: str, cut_off: bool = False) -> tuple[str | None, list[OutputToolCall]]:
        """(content, calls) of a finished answer; `cut_off`: it ended by max_tokens, so its
        last call may be incomplete (the complete ones before it still count)."""
        if self._tagged is not None:  # read as the stream reads it (see tagged_calls)
            tagged = tagged_calls(self._parser.tool_parser, text, complete=not cut_off)
            content, found = tagged if tagged is not None else (text, [])
        else:
            _, content, calls = self._parser.parse(text, self._request, enable_auto_tools=True)
            found = [(call.id, call.name, call.arguments) for call in calls or ()]
        tool_calls = [
            OutputToolCall(
                id=call_id or new_call_id(),
                function=OutputFunctionCall(name=name, arguments=arguments),
            )
            for call_id, name, arguments in found
        ]
        self.called = bool(tool_calls)
        return (content or None) if tool_calls else (content or ""), tool_calls

    def delta(
        self, text: str, token_ids: tuple[int, ...], finished: bool
    ) -> tuple[str | None, list[ToolCallDelta]]:
        """(content, call parts) this delta adds; both may be empty while the parser waits."""
        if self._tagged is not None:
            return self._tagged_parts(*self._tagged.feed(text, finished))
        message = self._parser.parse_delta(
            text, list(token_ids), self._request, self._prompt_ids, finished=finished
        )
        if message is None:
            return None, []
        parts = []
        for call in message.tool_calls:
            first = call.index not in self._ids
            if first:
                self._ids[call.index] = call.id or new_call_id()
            function = call.function
            parts.append(
                ToolCallDelta(
                    index=call.index,
                    id=self._ids[call.index] if first else None,
                    type="function" if first else None,
                    function=FunctionCallDelta(
                        name=function.name if function else None,
                        arguments=function.arguments if function else None,
                    ),
                )
            )
        self.called = self.called or bool(parts)
        return message.content, parts

    def _tagged_parts(
        self, content: str, found: list[CallPart]
    ) -> tuple[str | None, list[ToolCallDelta]]:
        parts = []
        for part in found:
            first = part.name is not None
            parts.append(
                ToolCallDelta(
                    index=part.index,
                    id=new_call_id() if first else None,
                    type="function" if first else None,
                    function=FunctionCallDelta(name=part.name, arguments=part.arguments),
                )
            )
        self.called = self.called or bool(parts)
        return content or None, parts


def _compact(structural_tag: str) -> str:
    # At most one whitespace character in a row inside a call's JSON (xgrammar's least), as
    # near to response_format's none as tags allow: a weak model given the choice pads with
    # whitespace until it runs out of tokens.
    tag = json.loads(structural_tag)

    def visit(node) -> None:
        if isinstance(node, dict):
            if node.get("type") == "json_schema":
                node["max_whitespace_cnt"] = 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(tag)
    return json.dumps(tag)
