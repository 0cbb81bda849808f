"""The transformers + PEFT reference engine behind the same API, and admission control.

The reference engine starts in seconds and decodes one sequence at a time, which also makes
it the easy way to fill the server's queue.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import ADMIN_KEY, ENGINE_ARGS, async_client, provision, start_server

MESSAGES = [{"role": "user", "content": "what is the refund policy"}]
MAX_PENDING = 2


@pytest.fixture(scope="module")
def reference_server(demo_model, adapter_dirs, tmp_path_factory):
    server = start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
        tmp_path_factory.mktemp("logs") / "reference-server.log",
        tmp_path_factory.mktemp("reference-data"),
        env={"LORALOOP_MAX_PENDING_REQUESTS": str(MAX_PENDING)},
    )
    try:
        server.wait_ready()
        provision(server, adapter_dirs)
        yield server
    finally:
        server.stop()


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


def test_full_queue_answers_503_with_retry_after(reference_server, reference_client):
    async def burst() -> list:
        async with async_client(reference_server) as client:
            calls = [
                client.chat.completions.with_raw_response.create(
                    model="acme/sales", messages=MESSAGES, max_tokens=200, temperature=0)
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
    after = reference_client.chat.completions.create(model="acme/sales", messages=MESSAGES,
                                                     max_tokens=4)
    assert after.usage.completion_tokens >= 1
