"""Structured outputs and tools driven by the official clients, as applications use them:
the openai SDK's `.parse` and `.stream` helpers, LangChain's `with_structured_output` and
`bind_tools`, and LiteLLM, through a tenant's adapter and through the base model, at
temperature 1.

The demo model knows nothing of JSON: every answer's structure comes from the server's
grammar, so each answer that finishes must be valid for the client's own model class, each
forced tool call must parse, and each response message must be accepted back as history.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME, async_client

ADAPTER = "globex/chat"
MODELS = [ADAPTER, BASE_MODEL_NAME]
TRIES = 20
QUESTION = [{"role": "user", "content": "what did I order?"}]


# Bounded where an application would bound them: the demo model, knowing no JSON, writes an
# unbounded string or number until it runs out of tokens.
class Line(BaseModel):
    sku: str = Field(min_length=2, max_length=12)
    quantity: Literal[1, 2, 3]
    tags: list[Literal["gift", "fragile", "bulk"]] = Field(max_length=3)


class Order(BaseModel):
    customer: str = Field(min_length=1, max_length=30)
    status: Literal["new", "paid", "shipped"]
    lines: list[Line] = Field(max_length=3)
    grid: list[list[bool]] = Field(max_length=3)  # nested lists
    coupon: str | None = Field(None, max_length=10)
    note: str | None = Field(max_length=20)


class LookupOrder(BaseModel):
    """Find an order by its reference."""

    reference: str = Field(min_length=1, max_length=16)
    urgent: bool


def parse_all(server, model: str) -> list:
    """TRIES `.parse` calls at once; each gives the parsed message, or None when it ran
    out of tokens (the SDK refuses to parse a cut-off answer)."""

    async def one(sdk: openai.AsyncOpenAI, seed: int):
        try:
            response = await sdk.chat.completions.parse(
                model=model,
                messages=QUESTION,
                response_format=Order,
                temperature=1.0,
                seed=seed,
                max_tokens=400,
            )
        except openai.LengthFinishReasonError:
            return None
        return response.choices[0].message

    async def every():
        async with async_client(server) as sdk:
            return await asyncio.gather(*(one(sdk, seed) for seed in range(TRIES)))

    return asyncio.run(every())


@pytest.mark.parametrize("model", MODELS)
def test_parse_gives_valid_models_and_each_message_goes_back_as_history(vllm_server, client, model):
    messages = parse_all(vllm_server, model)
    finished = [m for m in messages if m is not None]
    assert len(finished) >= TRIES // 2, f"{len(finished)} of {TRIES} finished"
    for message in finished:
        order = message.parsed
        assert isinstance(order, Order), message.content
        assert 1 <= len(order.customer) <= 30 and all(2 <= len(x.sku) <= 12 for x in order.lines)
    for message in finished[:5]:  # the SDK's own object, appended as applications do
        again = client.chat.completions.parse(
            model=model,
            messages=[*QUESTION, message, {"role": "user", "content": "ok?"}],
            response_format=Order,
            temperature=1.0,
            max_tokens=400,
        )
        assert again.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_with_response_format_and_with_tools(client, model):
    for seed in range(4):
        with client.chat.completions.stream(
            model=model,
            messages=QUESTION,
            response_format=Order,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        ) as stream:
            final = stream.get_final_completion()
        if final.choices[0].finish_reason == "stop":
            assert isinstance(final.choices[0].message.parsed, Order)
        with client.chat.completions.stream(
            model=model,
            messages=QUESTION,
            tools=[openai.pydantic_function_tool(LookupOrder)],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        ) as stream:
            final = stream.get_final_completion()
        message = final.choices[0].message
        assert final.choices[0].finish_reason == "tool_calls", message.content
        [call] = message.tool_calls
        assert isinstance(call.function.parsed_arguments, LookupOrder)
        followed = client.chat.completions.create(
            model=model,
            temperature=1.0,
            max_tokens=8,
            messages=[
                *QUESTION,
                message.model_dump(),
                {"role": "tool", "tool_call_id": call.id, "content": "shipped"},
            ],
        )
        assert followed.choices


def chat_model(server, model: str, **fields) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=ADMIN_KEY,
        model=model,
        temperature=1.0,
        max_retries=0,
        **fields,
    )


@pytest.mark.parametrize("model", MODELS)
def test_langchain_structured_output_is_valid(vllm_server, model):
    structured = chat_model(vllm_server, model, max_tokens=400).with_structured_output(
        Order, method="json_schema", include_raw=True
    )
    results = structured.batch([QUESTION] * TRIES, config={"max_concurrency": 8})
    finished = [r for r in results if r["raw"].response_metadata.get("finish_reason") == "stop"]
    assert len(finished) >= TRIES // 2, f"{len(finished)} of {TRIES} finished"
    for result in finished:
        assert result["parsing_error"] is None, result["raw"].content
        assert isinstance(result["parsed"], Order)


@pytest.mark.parametrize("model", MODELS)
def test_langchain_tool_calls_parse_and_round_trip(vllm_server, model):
    tools = chat_model(vllm_server, model, max_tokens=200).bind_tools(
        [LookupOrder], tool_choice="required", parallel_tool_calls=False
    )
    answers = tools.batch([QUESTION] * TRIES, config={"max_concurrency": 8})
    schema = openai.pydantic_function_tool(LookupOrder)["function"]["parameters"]
    for answer in answers:
        [call] = answer.tool_calls
        assert call["name"] == "LookupOrder" and not answer.invalid_tool_calls
        jsonschema.validate(call["args"], schema)
    for answer in answers[:5]:
        call = answer.tool_calls[0]
        history = [
            HumanMessage(QUESTION[0]["content"]),
            answer,
            ToolMessage(json.dumps("shipped"), tool_call_id=call["id"]),
        ]
        assert tools.invoke(history) is not None  # an error would raise


@pytest.fixture(scope="module")
def litellm() -> Iterator:
    with pytest.MonkeyPatch.context() as patch:
        # Its price list from the package, not fetched from GitHub at import.
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        yield litellm


@pytest.mark.parametrize("model", MODELS)
def test_litellm_structured_output_and_forced_tool_calls(vllm_server, litellm, model):
    route = {
        "model": f"openai/{model}",
        "api_base": f"{vllm_server.url}/v1",
        "api_key": ADMIN_KEY,
        "temperature": 1.0,
        "num_retries": 0,
    }

    async def every(**request) -> list:
        return await asyncio.gather(
            *(
                litellm.acompletion(messages=QUESTION, seed=seed, **route, **request)
                for seed in range(TRIES)
            )
        )

    structured = asyncio.run(every(response_format=Order, max_tokens=400))
    finished = [a for a in structured if a.choices[0].finish_reason == "stop"]
    assert len(finished) >= TRIES // 2, f"{len(finished)} of {TRIES} finished"
    for answer in finished:
        Order.model_validate_json(answer.choices[0].message.content)
    called = asyncio.run(
        every(
            tools=[openai.pydantic_function_tool(LookupOrder)],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=200,
        )
    )
    for answer in called:
        assert answer.choices[0].finish_reason == "tool_calls"
        [call] = answer.choices[0].message.tool_calls
        LookupOrder.model_validate_json(call.function.arguments)
    for answer in [*finished[:3], *called[:3]]:  # LiteLLM's own message object as history
        message = answer.choices[0].message
        history = [
            *QUESTION,
            message,
            *(
                {"role": "tool", "tool_call_id": call.id, "content": "shipped"}
                for call in message.tool_calls or ()
            ),
        ]
        again = litellm.completion(
            messages=[*history, {"role": "user", "content": "ok?"}], max_tokens=8, **route
        )
        assert again.choices
