"""vLLM through the HTTP API gives exactly what transformers + PEFT give (greedy, float32)."""

from __future__ import annotations

import itertools

import pytest

from ..conftest import ADAPTER_SEEDS, BASE_MODEL_NAME
from ..support import chat_ids, greedy_text, text_ids

MAX_TOKENS = 24
CONVERSATIONS = [
    [{"role": "user", "content": "hello world"}],
    [
        {"role": "system", "content": "answer the question"},
        {"role": "user", "content": "can you help with my refund order"},
    ],
]


def chat_text(client, model: str, messages) -> str:
    response = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    return response.choices[0].message.content


@pytest.mark.parametrize("adapter", ["acme/support", "globex/code", "initech/memo"])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_adapter_greedy_equals_peft(client, demo_model, adapter_dirs, adapter, messages):
    expected = greedy_text(
        demo_model, adapter_dirs[adapter], chat_ids(demo_model, messages), MAX_TOKENS
    )
    assert chat_text(client, adapter, messages) == expected


def test_base_greedy_equals_transformers(client, demo_model):
    messages = CONVERSATIONS[0]
    expected = greedy_text(demo_model, None, chat_ids(demo_model, messages), MAX_TOKENS)
    assert chat_text(client, BASE_MODEL_NAME, messages) == expected


def test_completions_greedy_equals_peft(client, demo_model, adapter_dirs):
    prompt = "the support ticket was"
    response = client.completions.create(
        model="globex/docs", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    ids = text_ids(demo_model, prompt)
    assert response.choices[0].text == greedy_text(
        demo_model, adapter_dirs["globex/docs"], ids, MAX_TOKENS
    )


def test_every_adapter_and_the_base_answer_differently(client):
    messages = CONVERSATIONS[1]
    answers = {m: chat_text(client, m, messages) for m in [BASE_MODEL_NAME, *ADAPTER_SEEDS]}
    for (a, text_a), (b, text_b) in itertools.combinations(answers.items(), 2):
        assert text_a != text_b, f"{a} and {b} gave the same answer"
