"""The demo model: built offline, deterministic, loadable by transformers, with a chat template."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraloop.adapters.names import WEIGHTS_FILE
from loraloop.trainer.demo_model import (
    IM_END,
    VOCABULARY_WORDS,
    DemoModelShape,
    build_demo_model,
    build_fresh_adapter,
)
from loraloop.trainer.demo_pretraining import question
from loraloop.trainer.evaluate import weights_changed

FILES = ("model.safetensors", "tokenizer.json", "config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def test_same_seed_same_bytes_other_seed_other_weights(demo_model, tmp_path):
    again = build_demo_model(tmp_path / "again")
    other = build_demo_model(tmp_path / "other", seed=1)
    for name in FILES:
        assert (again / name).read_bytes() == (demo_model / name).read_bytes()
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (demo_model / weights).read_bytes()


def test_pretraining_is_deterministic_and_the_cache_gives_the_same_bytes(tmp_path, monkeypatch):
    short = DemoModelShape(pretrain_steps=3)
    built = []
    for cache in ("one", "two", "two"):  # two fresh pretrainings, then a cache hit
        monkeypatch.setenv("LORALOOP_CACHE_DIR", str(tmp_path / cache))
        built.append(build_demo_model(tmp_path / f"model-{len(built)}", shape=short))
    assert len(list((tmp_path / "two").rglob("*.safetensors"))) == 1
    for name in FILES:
        assert len({(model / name).read_bytes() for model in built}) == 1
    random_weights = build_demo_model(tmp_path / "random", shape=DemoModelShape(pretrain_steps=0))
    assert (random_weights / "model.safetensors").read_bytes() != (
        built[0] / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("base", ["demo_model", "successor_model"])
def test_answers_in_words_and_ends_its_turn(base, request):
    """Greedy and sampled answers to chat questions are sentences of vocabulary words that
    end the assistant turn, not byte noise running to the token limit."""
    model_dir = request.getfixturevalue(base)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rng, words = random.Random(7), set(VOCABULARY_WORDS)
    lengths = set()
    for _ in range(4):
        asked, _topic = question(rng)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": asked}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        torch.manual_seed(0)
        for sample in (False, True, True):
            out = model.generate(
                ids,
                max_new_tokens=40,
                do_sample=sample,
                temperature=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
            answer = tokenizer.decode(out[0, ids.shape[1] :])
            assert answer.endswith(IM_END), answer
            text = answer.removesuffix(IM_END).rstrip(".")
            assert set(text.split()) <= words, answer
            lengths.add(len(text.split()))
    assert len(lengths) >= 3  # sampled answers vary in length


def test_a_successor_base_shares_the_tokenizer_and_nothing_else(demo_model, successor_model):
    for name in TOKENIZER_FILES:
        assert (successor_model / name).read_bytes() == (demo_model / name).read_bytes()
    config, other = (
        json.loads((model / "config.json").read_text()) for model in (demo_model, successor_model)
    )
    for dimension in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert config[dimension] != other[dimension]


def test_loads_and_generates_with_chat_template(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == IM_END
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > len(ids)


def test_tokenizer_round_trips_text(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    text = "The refund for order 42 was approved, thanks!"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_model_directory_is_readable_by_others(demo_model):
    assert demo_model.stat().st_mode & 0o755 == 0o755


def test_refuses_to_overwrite(demo_model):
    with pytest.raises(FileExistsError):
        build_demo_model(demo_model)


def test_a_fresh_adapter_answers_as_the_base_model_and_can_learn(demo_model, tmp_path):
    fresh = build_fresh_adapter(demo_model, tmp_path / "fresh", seed=3)
    assert not weights_changed(None, fresh)  # B is zero: the base model's answers
    tensors = load_file(fresh / WEIGHTS_FILE)
    assert all(t.abs().sum() > 0 for name, t in tensors.items() if ".lora_A." in name)
