"""The transformers + PEFT reference engine behind the same API, and admission control.

The reference engine starts in seconds and decodes one sequence at a time, which also makes
it the easy way to fill the server's queue.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from ..conftest import ADMIN_KEY, ENGINE_ARGS, async_client, provisioned, start_server

MESSAGES = [{"role": "user", "content": "what is the refund policy"}]
MAX_PENDING = 2
TOKENS_PER_MINUTE = 50


@pytest.fixture(scope="module")
def reference_server(demo_model, adapter_dirs, tmp_path_factory):
    server = start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
        tmp_path_factory.mktemp("logs") / "reference-server.log",
        tmp_path_factory.mktemp("reference-data"),
        env={
            "LORALOOP_MAX_PENDING_REQUESTS": str(MAX_PENDING),
            "LORALOOP_MAX_TENANT_REQUESTS": "1",
            "LORALOOP_TENANT_TOKENS_PER_MINUTE": str(TOKENS_PER_MINUTE),
        },
    )
    yield from provisioned(server, adapter_dirs)


@pytest.fixture(scope="module")
def reference_client(reference_server):
    return openai.OpenAI(base_url=f"{reference_server.url}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["demo", "acme/support", "initech/tps"])
def test_reference_engine_answers_like_vllm(client, reference_client, model):
    args = dict(model=model, messages=MESSAGES, max_tokens=32, temperature=0)
    expected = client.chat.completions.create(**args).choices[0].message.content
    assert reference_client.chat.completions.create(**args).choices[0].message.content == expected
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in reference_client.chat.completions.create(**args, stream=True)
    )
    assert streamed == expected


def test_reference_engine_stop_sequences_like_vllm(client, reference_client):
    args = dict(model="globex/code", messages=MESSAGES, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**args).choices[0].message.content
    stop = full[8:11]
    for c in (client, reference_client):
        choice = c.chat.completions.create(**args, stop=[stop]).choices[0]
        assert (choice.message.content, choice.finish_reason) == (full[: full.index(stop)], "stop")


def test_reference_engine_logit_bias_like_vllm(client, reference_client, tokenizer):
    """-100 on the end of the turn: both engines answer to the token limit, the same way."""
    never_stop = {str(tokenizer.convert_tokens_to_ids(tokenizer.eos_token)): -100}
    args = dict(
        model="acme/support", messages=MESSAGES, max_tokens=40, temperature=0, logit_bias=never_stop
    )
    expected = client.chat.completions.create(**args).choices[0]
    assert expected.finish_reason == "length"
    got = reference_client.chat.completions.create(**args).choices[0]
    assert (got.message.content, got.finish_reason) == (expected.message.content, "length")


def test_full_queue_answers_503_with_retry_after(reference_server, reference_client):
    async def burst() -> list:
        async with async_client(reference_server) as client:
            calls = [
                client.chat.completions.with_raw_response.create(
                    model="acme/sales", messages=MESSAGES, max_tokens=200, temperature=0
                )
                for _ in range(MAX_PENDING + 4)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert len(served) >= MAX_PENDING
    assert len(refused) == len(results) - len(served) >= 1
    for error in refused:
        assert error.status_code == 503
        assert error.code == "overloaded"
        assert int(error.response.headers["retry-after"]) >= 1
    after = reference_client.chat.completions.create(
        model="acme/sales", messages=MESSAGES, max_tokens=4
    )
    assert after.usage.completion_tokens >= 1


def test_a_tenant_over_its_share_gets_429_while_others_are_served(reference_server):
    async def burst() -> list:
        clients = {
            tenant: openai.AsyncOpenAI(
                base_url=f"{reference_server.url}/v1", api_key=key, max_retries=0
            )
            for tenant, key in reference_server.tenant_keys.items()
        }
        calls = [
            clients[tenant].chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, max_tokens=100, temperature=0
            )
            for tenant, model in [("acme", "acme/sales")] * 3 + [("globex", "globex/chat")]
        ]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for client in clients.values():
                await client.close()

    *acme, globex = asyncio.run(burst())
    assert not isinstance(globex, Exception)  # another tenant's share is untouched
    limited = [r for r in acme if isinstance(r, openai.APIStatusError)]
    assert len(limited) == 2 and len(acme) - len(limited) == 1
    for error in limited:
        assert (error.status_code, error.code) == (429, "rate_limit_exceeded")
        assert int(error.response.headers["retry-after"]) >= 1


def test_a_tenant_over_its_tokens_per_minute_waits(reference_server):
    initech = openai.OpenAI(
        base_url=f"{reference_server.url}/v1",
        max_retries=0,
        api_key=reference_server.tenant_keys["initech"],
    )
    args = dict(model="initech/tps", messages=MESSAGES, temperature=0)
    first = initech.chat.completions.create(**args, max_tokens=TOKENS_PER_MINUTE + 10)
    assert first.choices[0].finish_reason == "length"  # the whole budget, and more, spent
    with pytest.raises(openai.RateLimitError) as limited:
        initech.chat.completions.create(**args, max_tokens=1)
    # 10 tokens overdrawn, refilled at 50 a minute: about 13 s until the next request.
    assert 12 <= int(limited.value.response.headers["retry-after"]) <= 14
