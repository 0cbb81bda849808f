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
from loraloop.serve.openai.tagged_calls import tagged_calls
from loraloop.serve.openai.tool_calls import ToolCallFormat


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_the_end_tag_inside_an_argument_string_does_not_end_the_call():
    text = call("note", {"text": "a </tool_call> b"}) + call("note", {"text": "c"})
    content, calls = tagged_calls(Hermes2ProToolParser, text, complete=True)
    assert content == ""
    assert [(name, json.loads(arguments)) for _, name, arguments in calls] == [
        ("note", {"text": "a </tool_call> b"}),
        ("note", {"text": "c"}),
    ]


def test_complete_calls_before_a_cut_off_one_are_kept():
    text = "ok " + call("f", {"x": 1}) + '<tool_call>\n{"name": "f", "argum'
    assert tagged_calls(Hermes2ProToolParser, text, complete=False) == (
        "ok ",
        [(None, "f", '{"x": 1}')],
    )
    assert tagged_calls(Hermes2ProToolParser, text, complete=True) is None


@pytest.mark.parametrize("text", ["no calls", '<tool_call>{"x": 1}</tool_call>'])
def test_text_without_a_whole_call_has_none(text):
    assert tagged_calls(Hermes2ProToolParser, text, complete=False) is None
    assert tagged_calls(object(), call("f", {}), complete=True) is None  # another format


ECHO = {
    "type": "function",
    "function": {
        "name": "echo",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}


def streamed(tokenizer, text: str, pieces: list[str] | None = None) -> tuple[str, list, list]:
    """`text` streamed through a Hermes reader one token at a time (or in `pieces`):
    (content, the parts as sent, each call as the openai SDK accumulates the parts)."""
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], "tools": [ECHO]}
    )
    reader = (
        ToolCallFormat("hermes", tokenizer)
        .plan(request, {"echo": ECHO["function"]["parameters"]})
        .reader([1])
    )
    if pieces is None:
        pieces = [tokenizer.decode([t]) for t in tokenizer.encode(text, add_special_tokens=False)]
    content, sent, calls = "", [], {}
    for i, piece in enumerate(pieces):
        more, parts = reader.delta(piece, (), finished=i == len(pieces) - 1)
        content += more or ""
        for part in parts:
            wire = json.loads(part.model_dump_json())
            sent.append(wire)
            if "id" in wire:
                calls[wire["index"]] = {
                    "id": wire["id"],
                    "name": wire["function"]["name"],
                    "arguments": "",
                }
            calls[wire["index"]]["arguments"] += wire["function"].get("arguments", "")
    return content, sent, [calls[index] for index in sorted(calls)]


def test_the_end_tag_inside_a_streamed_argument_does_not_end_the_call(tokenizer):
    text = "sure " + call("echo", {"text": "a </tool_call> b"}) + call("echo", {"text": "c"})
    content, sent, calls = streamed(tokenizer, text)
    assert content == "sure "
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("echo", {"text": "a </tool_call> b"}),
        ("echo", {"text": "c"}),
    ]
    # id, type and name on each call's first part only, as OpenAI sends them
    firsts = [part for part in sent if "id" in part]
    assert [part["index"] for part in firsts] == [0, 1]
    assert all(part["type"] == "function" and part["function"]["name"] == "echo" for part in firsts)
    assert all(
        set(part) == {"index", "function"} and set(part["function"]) == {"arguments"}
        for part in sent
        if part not in firsts
    )
    assert len(sent) > 4  # arguments stream as they come, not only once a call is whole


def test_streamed_calls_match_the_whole_answer_however_the_text_is_cut(tokenizer):
    text = call("echo", {"text": 'q\\"} </tool_call> {'}) + "\n" + call("echo", {"text": "x"})
    whole = tagged_calls(Hermes2ProToolParser, text, complete=True)[1]
    for size in (1, 3, 7, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        _, _, calls = streamed(tokenizer, text, pieces)
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            (name, json.loads(arguments)) for _, name, arguments in whole
        ], size


def test_a_call_written_in_another_key_order_is_sent_once_whole(tokenizer):
    text = '<tool_call>{"arguments": {"text": "</tool_call>"}, "name": "echo"}</tool_call>'
    _, sent, calls = streamed(tokenizer, text, list(text))
    assert calls == [{"id": sent[0]["id"], "name": "echo", "arguments": '{"text": "</tool_call>"}'}]


def test_later_parts_of_a_streamed_call_omit_id_type_and_name():
    first = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="f", arguments="")
    )
    later = ToolCallDelta(index=0, function=FunctionCallDelta(arguments='{"x"'))
    assert json.loads(ChatDelta(tool_calls=[first, later]).model_dump_json())["tool_calls"] == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"x"'}},
    ]


def test_a_response_message_is_accepted_back_as_history():
    """The assistant message as OpenAI's SDK holds and dumps it, sent back unchanged."""
    returned = {
        "role": "assistant",
        "content": "hi",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "parsed": None,
    }
    called = {
        **returned,
        "content": None,
        "annotations": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "index": 0,  # as the SDK's stream helpers keep it
                "function": {"name": "f", "arguments": "{}", "parsed_arguments": None},
            }
        ],
    }
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                returned,
                {"role": "user", "content": "q"},
                called,
                {"role": "tool", "tool_call_id": "call_1", "content": "done"},
            ],
        }
    )
    assert request.messages[1].tool_calls is None
    assert request.messages[3].tool_calls[0].function.name == "f"
