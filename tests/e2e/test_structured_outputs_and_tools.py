"""Structured outputs, tool calls, penalties and logit_bias through the official openai client.

The demo model was pretrained on plain sentences and knows nothing of JSON or tools: whatever
structure it produces comes from the grammar the server puts around it, so a complete, valid
answer at temperature 1 shows that the constraint is applied and that the model is not left
to wander (no free whitespace, calls held to their schema).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from loraloop.adapters.prompts import StoredPrompt
from loraloop.serve.cli.client import AdminClient

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME
from ..support import read_metric

ADAPTER = "acme/support"
MESSAGES = [{"role": "user", "content": "where is my order?"}]
SAMPLES = 20

TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "normal", "urgent"]},
        "refund": {"type": "boolean"},
        "team": {"type": "string", "enum": ["billing", "shipping"]},
    },
    "required": ["priority", "refund", "team"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city today.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["paris", "rome", "oslo"]},
                "celsius": {"type": "boolean"},
            },
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
REFUND = {
    "type": "function",
    "function": {
        "name": "refund_order",
        "parameters": {
            "type": "object",
            "properties": {"order": {"type": "integer", "enum": [1001, 1002]}},
            "required": ["order"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, REFUND]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


class Ticket(BaseModel):
    priority: Literal["low", "normal", "urgent"]
    refund: bool


def sampled_choices(client, **request) -> list:
    """SAMPLES choices at temperature 1, over requests of n=4 with different seeds."""
    return [
        choice
        for seed in range(SAMPLES // 4)
        for choice in client.chat.completions.create(
            model=ADAPTER, messages=MESSAGES, n=4, temperature=1.0, seed=seed, **request
        ).choices
    ]


def check_call(call) -> dict:
    assert call.type == "function" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PARAMETERS[call.function.name])
    return arguments


def test_json_schema_answers_are_complete_and_valid_at_temperature_1(client):
    choices = sampled_choices(
        client,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA, "strict": True},
        },
    )
    assert len(choices) == SAMPLES
    for choice in choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), TICKET_SCHEMA)


def test_completions_take_response_format_too(client):
    response = client.completions.create(
        model=ADAPTER,
        prompt="the ticket:",
        temperature=1.0,
        max_tokens=60,
        n=4,
        seed=3,
        extra_body={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA},
            }
        },
    )
    for choice in response.choices:
        jsonschema.validate(json.loads(choice.text), TICKET_SCHEMA)


def test_json_object_mode_returns_a_json_object(client):
    response = client.chat.completions.create(
        model=ADAPTER,
        messages=MESSAGES,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
        logit_bias={"125": 0},
    )
    text = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # free-form keys and strings may run out of tokens; the prefix is still an object
        assert text.startswith("{")


def test_sdk_parse_returns_the_pydantic_object(client):
    parsed = client.chat.completions.parse(
        model=ADAPTER,
        messages=MESSAGES,
        response_format=Ticket,
        temperature=1.0,
        max_tokens=60,
        seed=11,
    )
    ticket = parsed.choices[0].message.parsed
    assert isinstance(ticket, Ticket)
    assert ticket.priority in ("low", "normal", "urgent")


@pytest.mark.parametrize(
    "tool_choice",
    [
        "required",
        {"type": "function", "function": {"name": "refund_order"}},
    ],
    ids=["required", "named"],
)
def test_forced_tool_calls_always_parse(client, tool_choice):
    choices = sampled_choices(
        client, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=120
    )
    assert len(choices) == SAMPLES
    for choice in choices:
        [call] = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls"
        check_call(call)
        if tool_choice != "required":
            assert call.function.name == "refund_order"


def test_parallel_calls_are_each_whole(client):
    """With parallel calls allowed, the model decides how many it makes; every answer that
    ends by itself holds one or more valid calls (one cut off by max_tokens may not)."""
    choices = sampled_choices(client, tools=TOOLS, tool_choice="required", max_tokens=200)
    finished = [choice for choice in choices if choice.finish_reason != "length"]
    assert finished
    for choice in finished:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            check_call(call)


def test_auto_round_trips_a_call_and_its_result(client, tokenizer):
    # The random model would rarely open a call by itself: a bias on the call-opening token
    # makes it, and the grammar then holds the call to the function's schema.
    opening = tokenizer.convert_tokens_to_ids("<tool_call>")
    first = client.chat.completions.create(
        model=ADAPTER,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="auto",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
        logit_bias={str(opening): 100},
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    check_call(call)
    followed = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"},
    ]
    second = client.chat.completions.create(
        model=ADAPTER,
        messages=followed,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=8,
    )
    assert second.choices[0].message.tool_calls in (None, [])
    assert second.choices[0].message.content
    # The tool result is part of the prompt the model saw.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_streamed_tool_calls_reassemble_to_the_whole_answer(client):
    request = dict(
        model=ADAPTER,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=120,
    )
    whole = client.chat.completions.create(**request).choices[0]
    chunks = list(client.chat.completions.create(**request, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or part.id
            call["name"] += part.function.name or ""
            call["arguments"] += part.function.arguments or ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls
    ]
    assert all(c["id"] for c in calls.values())


def test_logit_bias_removes_the_greedy_token(client, tokenizer):
    def greedy(**extra):
        response = client.completions.create(
            model=BASE_MODEL_NAME,
            prompt="the order",
            max_tokens=1,
            temperature=0,
            logprobs=1,
            **extra,
        )
        return response.choices[0]

    first = greedy()
    token = tokenizer.convert_tokens_to_ids(first.logprobs.tokens[0])
    assert tokenizer.decode([token]) == first.text
    banned = greedy(logit_bias={str(token): -100})
    assert banned.text != first.text
    forced = greedy(logit_bias={str(token): 100})
    assert forced.text == first.text


def test_penalties_stop_greedy_repetition(client):
    def tokens(**extra) -> list[str]:
        response = client.completions.create(
            model=ADAPTER,
            prompt="the order the order",
            max_tokens=40,
            temperature=0,
            logprobs=0,
            **extra,
        )
        return response.choices[0].logprobs.tokens

    plain = tokens()
    assert len(set(plain)) < len(plain)  # a random model at greedy repeats itself
    for penalty in (
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 2.0}},
    ):
        penalised = tokens(**penalty)
        assert penalised != plain
        assert len(set(penalised)) > len(set(plain)), penalty


def test_top_k_1_and_min_p_1_are_greedy(client):
    def answer(**extra) -> str:
        return (
            client.completions.create(
                model=ADAPTER, prompt="the order", max_tokens=12, seed=1, **extra
            )
            .choices[0]
            .text
        )

    greedy = answer(temperature=0)
    assert answer(temperature=1.0, extra_body={"top_k": 1}) == greedy
    assert answer(temperature=1.0, extra_body={"min_p": 1.0}) == greedy


def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


BAD_REQUESTS = [
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "if": {"required": ["a"]}},
                },
            }
        },
        "response_format",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        },
        "response_format",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": deep_schema(40)},
            }
        },
        "response_format",
    ),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "patternProperties": {}},
                    },
                }
            ]
        },
        "tools",
    ),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"999999": 5}}, "logit_bias"),
    ({"logit_bias": {"the": 5}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 10**9}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages"),
]


@pytest.mark.parametrize(
    ("fields", "param"),
    BAD_REQUESTS,
    ids=[f"{i}-{param}" for i, (_, param) in enumerate(BAD_REQUESTS)],
)
def test_bad_fields_are_400s_naming_the_parameter(client, fields, param):
    request = {"model": ADAPTER, "messages": MESSAGES, "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body=request, cast_to=object)
    error = caught.value.body
    assert param in (error.get("param") or "") + error["message"], error


def test_recorded_tool_answers_keep_tools_and_messages(client, vllm_server):
    """A recorded completion keeps the tools and tool messages of its prompt, so the trainer
    renders exactly what was served; score feedback names it by id."""
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="tests") as admin:
        admin.set_policy("acme/sales", {"record_completions": True})
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"oslo","celsius":true}'},
    }
    followed = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
    ]
    response = client.chat.completions.create(
        model="acme/sales",
        messages=followed,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
    )
    assert response.choices[0].message.tool_calls
    with sqlite3.connect(vllm_server.data_dir / "registry.db") as db:
        prompt, output = db.execute(
            "SELECT prompt, output FROM completions WHERE completion_id = ?", (response.id,)
        ).fetchone()
    stored = StoredPrompt.from_json(json.loads(prompt))
    assert stored.tool_definitions() == TOOLS
    assert [m.to_json() for m in stored.messages] == [
        *MESSAGES,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "snow", "tool_call_id": "call_1"},
    ]
    assert output.startswith("<tool_call>")  # the model's own text, as the trainer needs it
    feedback = client.post(
        "/feedback",
        cast_to=object,
        body={"completion_id": response.id, "score": 0.9, "judge": "tests"},
    )
    assert feedback["kind"] == "score"


def test_preference_feedback_takes_tools_and_tool_messages(client):
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "refund_order", "arguments": '{"order":1001}'},
    }
    created = client.post(
        "/feedback",
        cast_to=object,
        body={
            "adapter": ADAPTER,
            "tools": TOOLS,
            "messages": [
                *MESSAGES,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_9", "content": "refunded"},
            ],
            "chosen": "Your refund is on its way.",
            "rejected": "No.",
        },
    )
    assert created["kind"] == "preference"
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            "/feedback",
            cast_to=object,
            body={
                "adapter": ADAPTER,
                "prompt": "hi",
                "tools": TOOLS,
                "chosen": "a",
                "rejected": "b",
            },
        )
    assert "tools go with messages" in caught.value.body["message"]


# -- what clients rely on: the SDK's stream helpers, history, valid JSON strings ----------


class Order(BaseModel):
    reference: str = Field(max_length=40)
    note: str | None = Field(None, min_length=1, max_length=40)


def test_sdk_stream_helper_accumulates_tool_calls(client):
    with client.chat.completions.stream(
        model=ADAPTER,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=5,
        max_tokens=120,
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    check_call(call)


def test_sdk_stream_helper_parses_response_format(client):
    for seed in range(8):
        with client.chat.completions.stream(
            model=ADAPTER,
            messages=MESSAGES,
            response_format=Order,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        ) as stream:
            final = stream.get_final_completion()
        assert isinstance(final.choices[0].message.parsed, Order)


@pytest.mark.parametrize("kind", ["plain", "tools", "structured"])
def test_each_response_message_is_accepted_back_as_history(client, kind):
    request = {
        "plain": {},
        "tools": {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
        "structured": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA},
            }
        },
    }[kind]
    messages = list(MESSAGES)
    for turn in range(3):
        response = client.chat.completions.create(
            model=ADAPTER, messages=messages, temperature=1.0, seed=turn, max_tokens=120, **request
        )
        message = response.choices[0].message
        messages.append(message.model_dump())  # as applications keep history
        for call in message.tool_calls or ():
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "done"})
        messages.append({"role": "user", "content": "and then?"})


def test_length_bounded_strings_are_valid_json_at_temperature_1(client):
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "maxLength": 40},
            "t": {"type": "string", "minLength": 2, "maxLength": 8},
        },
        "required": ["s", "t"],
        "additionalProperties": False,
    }
    choices = sampled_choices(
        client,
        max_tokens=120,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "strings", "schema": schema},
        },
    )
    finished = [c for c in choices if c.finish_reason == "stop"]
    assert len(finished) >= SAMPLES // 2
    for choice in finished:
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_tool_arguments_with_bounded_strings_always_parse(client):
    note = {
        "type": "function",
        "function": {
            "name": "note",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 30}},
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    }
    choices = sampled_choices(
        client, tools=[note], tool_choice="required", parallel_tool_calls=False, max_tokens=120
    )
    for choice in (c for c in choices if c.finish_reason != "length"):
        [call] = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), note["function"]["parameters"])


def test_an_answer_that_breaks_its_schema_is_a_named_error_and_counted(client, vllm_server):
    """The grammar's date pattern admits year 0000, which is no date: a bias towards 0
    makes the model write it, and the server refuses to pass it on as valid."""
    schema = {
        "type": "object",
        "properties": {"day": {"type": "string", "format": "date"}},
        "required": ["day"],
        "additionalProperties": False,
    }
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=ADAPTER,
            messages=MESSAGES,
            temperature=0,
            max_tokens=40,
            logit_bias={"20": 100},  # the token "0"
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "day", "schema": schema},
            },
        )
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "invalid_structured_output"
    assert caught.value.body["param"] == "response_format"
    with pytest.raises(openai.APIError) as streamed:
        list(
            client.chat.completions.create(
                model=ADAPTER,
                messages=MESSAGES,
                temperature=0,
                max_tokens=40,
                stream=True,
                logit_bias={"20": 100},
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "day", "schema": schema},
                },
            )
        )
    assert "invalid_structured_output" in str(streamed.value.body)
    assert read_metric(vllm_server.url, "loraloop_structured_outputs_invalid_total") >= 2


def test_complete_calls_are_returned_when_the_answer_runs_out_of_tokens(client):
    """Parallel calls allowed and required: the model keeps calling until max_tokens; the
    calls it completed come back as calls (finish_reason length), for every choice."""
    response = client.chat.completions.create(
        model=ADAPTER,
        messages=MESSAGES,
        tools=[REFUND],
        tool_choice="required",
        n=4,
        temperature=1.0,
        seed=2,
        max_tokens=110,
    )
    for choice in response.choices:
        if choice.finish_reason == "length":
            assert choice.message.tool_calls, choice.message.content
            for call in choice.message.tool_calls:
                check_call(call)


def test_the_end_tag_inside_an_argument_does_not_lose_the_call(client):
    echo = {
        "type": "function",
        "function": {
            "name": "echo",
            "parameters": {
                "type": "object",
                "properties": {"text": {"enum": ["a </tool_call> b"]}},
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    }
    request = {
        "model": ADAPTER,
        "messages": MESSAGES,
        "tools": [echo],
        "temperature": 0,
        "max_tokens": 60,
        "tool_choice": {"type": "function", "function": {"name": "echo"}},
    }
    response = client.chat.completions.create(**request)
    [call] = response.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"text": "a </tool_call> b"}
    with client.chat.completions.stream(**request) as stream:  # the SDK's own accumulation
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"text": "a </tool_call> b"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "string", "pattern": "^(a{1,200}){1,200}$"},
                    },
                }
            },
            "response_format",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "string", "pattern": "^(a)\\1$"},
                    },
                }
            },
            "response_format",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "pattern": "^(a)\\1$"}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "description": "x" * (1 << 20)},
                        },
                    }
                ]
            },
            "tools",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
    ],
    ids=["costly-pattern", "backreference", "tool-backreference", "1MB-tool", "tool-choice"],
)
def test_grammars_that_cannot_be_built_are_400s_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=8, **fields)
    error = caught.value.body
    assert error["param"] == param, error
    assert ".cc:" not in error["message"] and "/project" not in error["message"]


def test_a_hostile_schema_does_not_stall_another_tenants_chat(vllm_server):
    """A 57 KB schema of 2,000 optional properties (under the size limit) once compiled for
    36 s in the engine, next to everyone's decoding; nested counted repeats likewise. While
    one tenant keeps sending them, another tenant's plain chat keeps its pace."""
    hostile = [
        {
            "type": "object",
            "properties": {f"field_{i:04d}": {"type": "string"} for i in range(2000)},
        },
        {
            "type": "object",
            "properties": {
                f"p{i}": {"type": "string", "pattern": "^((a{1,30}){1,30}){1,30}$"}
                for i in range(4)
            },
        },
    ]
    acme = openai.OpenAI(
        base_url=f"{vllm_server.url}/v1", max_retries=0, api_key=vllm_server.tenant_keys["acme"]
    )
    globex = openai.OpenAI(
        base_url=f"{vllm_server.url}/v1", max_retries=0, api_key=vllm_server.tenant_keys["globex"]
    )

    def chat_p95(count: int = 30) -> float:
        times = []
        for seed in range(count):
            started = time.perf_counter()
            globex.chat.completions.create(
                model="globex/chat", messages=MESSAGES, max_tokens=8, seed=seed
            )
            times.append(time.perf_counter() - started)
        return sorted(times)[int(0.95 * (count - 1))]

    alone = chat_p95()
    stop = threading.Event()
    refused = []

    def attack() -> None:
        # Sent again as soon as each is answered (after a breath: on a 2-core machine a
        # client in a tight loop would measure this test process's own CPU use).
        while not stop.wait(0.05):
            for schema in hostile:
                try:
                    acme.chat.completions.create(
                        model=ADAPTER,
                        messages=MESSAGES,
                        max_tokens=8,
                        response_format={
                            "type": "json_schema",
                            "json_schema": {"name": "hostile", "schema": schema},
                        },
                    )
                except openai.BadRequestError as error:
                    refused.append(error.body["param"])

    attackers = [threading.Thread(target=attack)]  # one hostile request in flight at a time
    for thread in attackers:
        thread.start()
    try:
        during = chat_p95()
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=60)
    # 2x, with 50 ms for the noise of a shared 2-core machine on a fast small model.
    assert during <= 2 * alone + 0.05, (alone, during)
    assert refused and set(refused) == {"response_format"}
