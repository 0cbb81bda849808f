"""The OpenAI-compatible API through the official `openai` client, as users call it."""

from __future__ import annotations

import openai
import pytest

from ..conftest import ADAPTER_SEEDS, BASE_MODEL_NAME

MESSAGES = [{"role": "user", "content": "tell me a story about the city"}]


def test_chat_names_the_version_that_served_it(client, tokenizer):
    # The end of the turn is ruled out, so the answer runs to max_tokens.
    never_stop = {str(tokenizer.convert_tokens_to_ids(tokenizer.eos_token)): -100}
    raw = client.chat.completions.with_raw_response.create(
        model="acme/support",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        logit_bias=never_stop,
    )
    response = raw.parse()
    assert response.model == "acme/support@1"
    assert raw.headers["x-adapter-version"] == "acme/support@1"
    assert response.id.startswith("chatcmpl-")
    assert response.choices[0].finish_reason == "length"
    usage = response.usage
    assert usage.completion_tokens == 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_pinned_version_and_base_model(client):
    pinned = client.chat.completions.create(
        model="acme/support@1", messages=MESSAGES, max_tokens=8, temperature=0
    )
    live = client.chat.completions.create(
        model="acme/support", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert pinned.choices[0].message.content == live.choices[0].message.content
    raw = client.chat.completions.with_raw_response.create(
        model=BASE_MODEL_NAME, messages=MESSAGES, max_tokens=8
    )
    assert raw.parse().model == BASE_MODEL_NAME
    assert "x-adapter-version" not in raw.headers


def test_models_list_shows_base_and_live_adapters(client):
    models = {m.id: m for m in client.models.list().data}
    assert BASE_MODEL_NAME in models
    for adapter in ADAPTER_SEEDS:
        assert models[adapter].parent == BASE_MODEL_NAME
        assert models[adapter].owned_by == adapter.split("/")[0]
        assert models[adapter].live_version == 1


def test_streamed_chat_concatenates_to_the_whole_answer(client):
    whole = client.chat.completions.create(
        model="globex/chat", messages=MESSAGES, max_tokens=40, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="globex/chat",
            messages=MESSAGES,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_streamed_completion_concatenates_to_the_whole_answer(client):
    args = dict(model="initech/tps", prompt="the order number", max_tokens=30, temperature=0)
    whole = client.completions.create(**args)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True))
    assert streamed == whole.choices[0].text


def test_completion_prompts_batch_and_token_ids(client, tokenizer):
    prompts = ["hello world", "the price of water"]
    batch = client.completions.create(
        model="acme/sales", prompt=prompts, n=2, max_tokens=12, temperature=0
    )
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    texts = {c.index: c.text for c in batch.choices}
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: n copies of one answer
    assert texts[0] != texts[2]
    tokenized = client.completions.create(
        model="acme/sales",
        prompt=tokenizer("hello world")["input_ids"],
        max_tokens=12,
        temperature=0,
    )
    assert tokenized.choices[0].text == texts[0]


def test_stop_sequence_cuts_the_answer(client):
    args = dict(model="globex/code", messages=MESSAGES, temperature=0, max_tokens=30)
    full = client.chat.completions.create(**args).choices[0].message.content
    stop = full[10:14]
    stopped = client.chat.completions.create(**args, stop=[stop]).choices[0]
    assert stopped.message.content == full[: full.index(stop)]
    assert stopped.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_choices_differ(client):
    args = dict(
        model="acme/legal",
        messages=MESSAGES,
        temperature=1.0,
        top_p=0.95,
        max_tokens=24,
        seed=1234,
        n=3,
    )
    first = [c.message.content for c in client.chat.completions.create(**args).choices]
    second = [c.message.content for c in client.chat.completions.create(**args).choices]
    assert first == second
    assert len(set(first)) == 3


def test_chat_logprobs(client):
    response = client.chat.completions.create(
        model="globex/docs",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    tokens = response.choices[0].logprobs.content
    assert len(tokens) == response.usage.completion_tokens == 6
    for token in tokens:
        assert len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert token.logprob == pytest.approx(values[0])  # greedy picks the most likely


def test_completion_logprobs(client):
    response = client.completions.create(
        model="globex/docs", prompt="hello", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)


def test_client_error_classes(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="acme/nope", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="acme/support", messages=MESSAGES, max_tokens=10**6)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="acme/support@2", messages=MESSAGES)
