"""Stored prompts keep tools and tool messages, and render as the request did."""

from __future__ import annotations

import json

from loraloop.adapters.prompts import StoredMessage, StoredPrompt, StoredToolCall

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "a": {"type": "boolean"}},
            },
        },
    }
]


def conversation() -> StoredPrompt:
    return StoredPrompt.chat(
        [
            ("developer", "be brief"),
            ("user", "weather?"),
            StoredMessage.of(
                "assistant", "", [StoredToolCall("c1", "get_weather", '{"city":"oslo"}')]
            ),
            StoredMessage.of("tool", "snow", tool_call_id="c1"),
        ],
        TOOLS,
    )


def test_round_trip_through_json_keeps_everything_and_the_key_order():
    prompt = conversation()
    stored = json.loads(json.dumps(prompt.to_json()))
    assert StoredPrompt.from_json(stored) == prompt
    assert list(stored["tools"][0]["function"]["parameters"]["properties"]) == ["city", "a"]
    assert stored["messages"][0]["role"] == "system"  # as the template knows it


def test_old_rows_without_tools_still_load():
    prompt = StoredPrompt.from_json({"messages": [{"role": "user", "content": "hi"}]})
    assert prompt == StoredPrompt.chat([("user", "hi")])
    assert prompt.tool_definitions() is None


def test_prompts_are_hashable_and_equal_by_value():
    assert len({conversation(), conversation(), StoredPrompt(text="x")}) == 2


def test_templates_get_arguments_as_objects():
    call = conversation().template_messages()[2]["tool_calls"][0]
    assert call["function"]["arguments"] == {"city": "oslo"}


def test_rendered_with_the_demo_template(tokenizer):
    from loraloop.adapters.prompts import PromptRenderer

    ids = PromptRenderer(tokenizer, 1024).render(conversation())
    text = tokenizer.decode(ids)
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "oslo"}}</tool_call>' in text
    assert "<tool_response>snow</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
