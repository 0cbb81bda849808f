"""Tool calls read back from a finished answer, and the wire shape of streamed call parts."""

from __future__ import annotations

import json

import pytest
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

from loraloop.serve.openai.protocol import (
    ChatCompletionRequest,
    ChatDelta,
    FunctionCallDelta,
    ToolCallDelta,
)
from loraloop.serve.openai.tool_calls import tagged_calls


def call(name: str, arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def test_the_end_tag_inside_an_argument_string_does_not_end_the_call():
    text = call("note", {"text": "a </tool_call> b"}) + call("note", {"text": "c"})
    content, calls = tagged_calls(Hermes2ProToolParser, text, complete=True)
    assert content == ""
    assert [(name, json.loads(arguments)) for _, name, arguments in calls] == [
        ("note", {"text": "a </tool_call> b"}), ("note", {"text": "c"})]


def test_complete_calls_before_a_cut_off_one_are_kept():
    text = "ok " + call("f", {"x": 1}) + '<tool_call>\n{"name": "f", "argum'
    assert tagged_calls(Hermes2ProToolParser, text, complete=False) == (
        "ok ", [(None, "f", '{"x": 1}')])
    assert tagged_calls(Hermes2ProToolParser, text, complete=True) is None


@pytest.mark.parametrize("text", ["no calls", '<tool_call>{"x": 1}</tool_call>'])
def test_text_without_a_whole_call_has_none(text):
    assert tagged_calls(Hermes2ProToolParser, text, complete=False) is None
    assert tagged_calls(object(), call("f", {}), complete=True) is None  # another format


def test_later_parts_of_a_streamed_call_omit_id_type_and_name():
    first = ToolCallDelta(index=0, id="call_1", type="function",
                          function=FunctionCallDelta(name="f", arguments=""))
    later = ToolCallDelta(index=0, function=FunctionCallDelta(arguments='{"x"'))
    assert json.loads(ChatDelta(tool_calls=[first, later]).model_dump_json())["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"x"'}}]


def test_a_response_message_is_accepted_back_as_history():
    """The assistant message as OpenAI's SDK holds and dumps it, sent back unchanged."""
    returned = {"role": "assistant", "content": "hi", "refusal": None, "annotations": [],
                "audio": None, "function_call": None, "tool_calls": [], "parsed": None}
    called = {**returned, "content": None, "annotations": None, "tool_calls": [
        {"id": "call_1", "type": "function", "index": 0,  # as the SDK's stream helpers keep it
         "function": {"name": "f", "arguments": "{}", "parsed_arguments": None}}]}
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "q"}, returned, {"role": "user", "content": "q"}, called,
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}]})
    assert request.messages[1].tool_calls is None
    assert request.messages[3].tool_calls[0].function.name == "f"
