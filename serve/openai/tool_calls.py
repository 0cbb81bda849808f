"""Tool calls in the base model's own format, read and enforced by vLLM's parser of that name.

Every model family writes tool calls its own way (Hermes `<tool_call>` JSON, Llama's JSON,
Mistral's `[TOOL_CALLS]`...). The operator names the format for the base model with
`--tool-call-parser`, as vLLM names them; vLLM's parser then does both halves:

- before sampling, it turns `tools`, `tool_choice` and `parallel_tool_calls` into a grammar
  (a structural tag): `required` and a named function force a call, and every call's
  arguments follow the function's parameter schema, so a call always parses. Under `auto`
  the model writes freely until it opens a call; the call itself is then held to the schema.
- after sampling, it reads the calls out of the text, whole or as streamed deltas.

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
from vllm.parser.parser_manager import ParserManager

from ..engine.protocol import OutputConstraint
from ..errors import InvalidRequest
from .protocol import (
    ChatCompletionRequest,
    FunctionCallDelta,
    OutputFunctionCall,
    OutputToolCall,
    ToolCallDelta,
)

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
                tool_parser_name=parser_name, enable_auto_tools=True,
                tool_strict_level=TOOL_STRICT_LEVEL, tokenizer=tokenizer)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"tool-call parser '{parser_name}': {exc}") from exc
        self._parser = parser
        self._tokenizer = tokenizer

    def plan(self, request: ChatCompletionRequest, parameters: dict[str, dict]
             ) -> ToolCallPlan:
        """`parameters`: each function's parameter schema as the grammar is built from it
        (see structured.check_schema)."""
        wire = request.model_dump(
            mode="json", by_alias=True, exclude_none=True,
            include={"model", "messages", "tools", "tool_choice", "parallel_tool_calls",
                     "response_format"})
        wire.setdefault("tool_choice", "auto")
        for tool in wire.get("tools", ()):
            function = tool["function"]
            if function["name"] in parameters:
                function["parameters"] = parameters[function["name"]]
        try:
            parser_request = ParserRequest.model_validate(wire)
        except ValidationError as exc:
            raise InvalidRequest(f"tools: {exc.errors()[0]['msg']}", param="tools") from exc
        parser_request = self._parser(self._tokenizer, parser_request.tools).adjust_request(
            parser_request)
        return ToolCallPlan(self, parser_request)

    def new_parser(self, request: ParserRequest):
        return self._parser(self._tokenizer, request.tools)


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
            return OutputConstraint("structural_tag", _compact(structured.structural_tag),
                                    param="tools")
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
        self.called = False

    def whole(self, text: str, cut_off: bool = False) -> tuple[str | None, list[OutputToolCall]]:
        """(content, calls) of a finished answer; `cut_off`: it ended by max_tokens, so its
        last call may be incomplete (the complete ones before it still count)."""
        _, content, calls = self._parser.parse(text, self._request, enable_auto_tools=True)
        found = [(call.id, call.name, call.arguments) for call in calls or ()]
        if not found:
            tagged = tagged_calls(self._parser.tool_parser, text, complete=not cut_off)
            if tagged is not None:
                content, found = tagged
        tool_calls = [OutputToolCall(id=call_id or new_call_id(),
                                     function=OutputFunctionCall(name=name, arguments=arguments))
                      for call_id, name, arguments in found]
        self.called = bool(tool_calls)
        return (content or None) if tool_calls else (content or ""), tool_calls

    def delta(self, text: str, token_ids: tuple[int, ...], finished: bool
              ) -> tuple[str | None, list[ToolCallDelta]]:
        """(content, call parts) this delta adds; both may be empty while the parser waits."""
        message = self._parser.parse_delta(text, list(token_ids), self._request,
                                           self._prompt_ids, finished=finished)
        if message is None:
            return None, []
        parts = []
        for call in message.tool_calls:
            first = call.index not in self._ids
            if first:
                self._ids[call.index] = call.id or new_call_id()
            function = call.function
            parts.append(ToolCallDelta(
                index=call.index,
                id=self._ids[call.index] if first else None,
                type="function" if first else None,
                function=FunctionCallDelta(name=function.name if function else None,
                                           arguments=function.arguments if function else None),
            ))
        self.called = self.called or bool(parts)
        return message.content, parts


def tagged_calls(tool_parser, text: str, complete: bool
                 ) -> tuple[str, list[tuple[None, str, str]]] | None:
    """(content, calls) read from `text` for formats that wrap a JSON call, {"name",
    "arguments"}, in start and end tags (Hermes' `<tool_call>`); None for other formats or
    when no call is whole.

    vLLM's readers of such formats look for the end tag by text search, so an argument
    string that holds the end tag, or a last call cut off by max_tokens, loses every call of
    the answer. Here each call's JSON is read as JSON, so the tag inside a string is just
    text; with `complete` False the calls before an incomplete last one are kept.
    """
    start = getattr(tool_parser, "tool_call_start_token", None)
    end = getattr(tool_parser, "tool_call_end_token", None)
    if not (isinstance(start, str) and isinstance(end, str)) or start not in text:
        return None
    decoder, calls = json.JSONDecoder(), []
    position = text.index(start)
    content = text[:position]
    while position != -1:
        body = position + len(start)
        body += len(text[body:]) - len(text[body:].lstrip())
        try:
            call, after = decoder.raw_decode(text, body)
        except ValueError:
            break  # cut off, or not a call: what came before stands
        rest = text[after:].lstrip()
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and "arguments" in call and rest.startswith(end)):
            break
        calls.append((None, call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
        position = text.find(start, len(text) - len(rest) + len(end))
    if not calls or (complete and position != -1):
        return None
    return content, calls


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
