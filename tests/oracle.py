"""transformers + PEFT greedy decoding, straight from the libraries: the oracle for vLLM."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


@cache
def _tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@cache
def _model(model_dir: Path, adapter_dir: Path | None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval()


def chat_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    encoded = _tokenizer(model_dir).apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])


def text_ids(model_dir: Path, text: str) -> list[int]:
    return _tokenizer(model_dir)(text)["input_ids"]


def greedy_text(model_dir: Path, adapter_dir: Path | None, prompt_ids: list[int],
                max_new_tokens: int) -> str:
    model = _model(model_dir, adapter_dir)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False)
    text = _tokenizer(model_dir).decode(out[0][len(prompt_ids):], skip_special_tokens=True)
    # An incomplete UTF-8 character at the very end is withheld by the server, by design.
    return text.rstrip("\ufffd")
