"""The demo model: built offline, deterministic, loadable by transformers, with a chat template."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraloop.trainer.demo_model import IM_END, build_demo_model


def test_same_seed_same_bytes_other_seed_other_weights(demo_model, tmp_path):
    again = build_demo_model(tmp_path / "again")
    other = build_demo_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (demo_model / name).read_bytes()
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (demo_model / weights).read_bytes()


def test_loads_and_generates_with_chat_template(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}],
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
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
