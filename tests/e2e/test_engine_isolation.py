"""Engine-level isolation: a request without an adapter computes the base model exactly,
whatever adapters share its batches, and leaves nothing wrong behind in the prefix cache.

vLLM marks the tokens of a request without a LoRA with slot index -1. On CPU its LoRA ops
index the stacked slot weights with it, and Python turns -1 into the last slot: in a mixed
batch such tokens got the last slot's adapter. This test fills every slot with adapters and
runs base-model requests beside them, many times, comparing token ids and logprobs exactly.
Engines that work around it give such requests the null adapter, whose effect must be nil.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from safetensors.torch import load_file

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.names import CONFIG_FILE, WEIGHTS_FILE
from loraloop.adapters.validation import validate_adapter
from loraloop.serve.engine.factory import create_engine
from loraloop.serve.engine.interface import AdapterRef, SamplingSpec
from loraloop.serve.engine.null_adapter import write_null_adapter
from loraloop.serve.settings import ServeSettings

ROUNDS = 6
# float32 and eager as in the other vLLM tests; two engine slots for three adapters, so every
# slot (the last one included) holds an adapter and adapters keep swapping.
SETTINGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 1024,
    "kv_cache_gib": 1.0,
    "max_loras": 2,
    "max_cpu_loras": 4,
    "max_lora_rank": 8,
}
ADAPTERS = ("acme/support", "acme/sales", "globex/chat")
BASE = SamplingSpec(max_tokens=8, temperature=0, logprobs=2)
# Adapter requests outlive the base one: each of its decode steps shares a batch with them.
ADAPTED = SamplingSpec(max_tokens=24, temperature=0)

Answer = tuple[tuple[int, ...], tuple[tuple[float, tuple], ...]]


def base_prompt(tokenizer, round_index: int) -> list[int]:
    """A fresh prompt per round, several cache blocks long: its prefill happens in the mixed
    batch, so wrong keys and values would land in the prefix cache."""
    words = " ".join(f"order {round_index * 100 + i} costs {i} dollars" for i in range(40))
    return tokenizer(f"round {round_index}: {words}. what is the total")["input_ids"]


async def answer(
    engine,
    prompt: list[int],
    sampling: SamplingSpec,
    adapter: AdapterRef | None,
    request_id: str,
    cache_salt: str | None = None,
) -> Answer:
    """Token ids and, per token, (logprob, top alternatives), float for float."""
    tokens, logprobs = [], []
    async for delta in engine.generate(prompt, sampling, adapter, request_id, cache_salt):
        tokens += delta.token_ids
        logprobs += [(lp.logprob, lp.top) for lp in delta.logprobs or ()]
    return tuple(tokens), tuple(logprobs)


async def plain_answer(engine, prompt: list[int]) -> Answer:
    """The base model through vLLM's own path for requests without a LoRA, in a batch of one
    (where that path is right): what the null adapter must reproduce exactly."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=BASE.max_tokens, temperature=0, logprobs=BASE.logprobs)
    async for output in engine.engine.generate(
        TokensPrompt(prompt_token_ids=prompt, cache_salt="plain"), params, "plain"
    ):
        completion = output.outputs[0]  # cumulative: the last one holds everything
    return tuple(completion.token_ids), tuple(
        candidates[token].logprob
        for token, candidates in zip(completion.token_ids, completion.logprobs, strict=True)
    )


async def check_isolation(engine, adapters: list[AdapterRef], tokenizer) -> None:
    ids = (f"req-{i}" for i in itertools.count())
    others = [
        tokenizer(f"adapter {i} speaks about refunds")["input_ids"] for i in range(len(adapters))
    ]
    for adapter in adapters:
        await engine.add_adapter(adapter)
    for round_index in range(ROUNDS):
        prompt = base_prompt(tokenizer, round_index)
        # The reference runs alone, in a prefix-cache partition of its own.
        alone = await answer(engine, prompt, BASE, None, next(ids), cache_salt="reference")
        if round_index == 0:
            tokens, logprobs = await plain_answer(engine, prompt)
            assert (tokens, logprobs) == (alone[0], tuple(lp for lp, _ in alone[1])), (
                "the base model's answer differs from vLLM's answer without any LoRA"
            )
        side = [
            answer(engine, p, ADAPTED, a, next(ids)) for a, p in zip(adapters, others, strict=True)
        ]
        *adapted, mixed = await asyncio.gather(*side, answer(engine, prompt, BASE, None, next(ids)))
        assert all(tokens[: len(alone[0])] != alone[0] for tokens, _ in adapted), (
            "an adapter answers like the base model: the comparison could not tell them apart"
        )
        assert mixed == alone, f"round {round_index}: the base answer changed beside adapters"
        # Alone again: the prompt's blocks now come from the prefix cache the mixed batch wrote.
        again = await answer(engine, prompt, BASE, None, next(ids))
        assert again == alone, f"round {round_index}: the prefix cache kept adapted values"


def test_null_adapter_is_a_valid_adapter_of_zeros_on_every_layer(demo_model, tmp_path):
    write_null_adapter(demo_model, tmp_path, base_model_name=str(demo_model))
    base = BaseModelInfo.load(demo_model)
    facts = validate_adapter(
        {name: tmp_path / name for name in (CONFIG_FILE, WEIGHTS_FILE)},
        base,
        max_rank=8,
        max_bytes=1 << 20,
    )
    assert (facts.rank, facts.target_modules) == (1, ("q_proj",))
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    assert {key.split(".lora_")[0].removeprefix("base_model.model.") for key in tensors} == {
        module for module in base.linear_shapes if module.endswith(".q_proj")
    }
    assert all(not tensor.any() for tensor in tensors.values())


@pytest.mark.slow
def test_base_requests_match_alone_beside_every_slot_filled(demo_model, adapter_dirs, tokenizer):
    adapters = [
        AdapterRef(name, 1, index + 1, adapter_dirs[name]) for index, name in enumerate(ADAPTERS)
    ]
    engine = create_engine(ServeSettings(model=str(demo_model), auth=False, **SETTINGS))

    async def run() -> None:
        await engine.start()
        try:
            await check_isolation(engine, adapters, tokenizer)
        finally:
            await engine.shutdown()

    asyncio.run(run())
