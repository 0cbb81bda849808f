"""A fresh LoRA on a base model, and a trained one saved as exactly the two adapter files.

What every trainer here shares (DPO, distillation to a new base): the layers a new adapter
targets, how PEFT initialises it, and what reaches the output directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from loraloop.adapters.names import ADAPTER_FILES

# Each training step as a dict (step, loss and what the trainer adds), for the caller to log
# and to renew its lease with.
ProgressCallback = Callable[[dict], None]


def fresh_lora(
    base: torch.nn.Module, rank: int, target_modules: Sequence[str] | None = None
) -> PeftModel:
    """`base` with a trainable LoRA of `rank` on `target_modules` (by default the attention
    projections), as PEFT initialises it: random A from torch's generator, zero B."""
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=(
            attention_projections(base)
            if target_modules is None
            else _present(base, target_modules)
        ),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def attention_projections(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers inside attention blocks, e.g. q_proj, k_proj, v_proj,
    o_proj for Llama-style models: what every LoRA-serving engine supports."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".self_attn." in name
    }
    if not names:
        raise ValueError(
            "found no linear layers under a 'self_attn' module; train from a parent adapter "
            "that names its target modules"
        )
    return sorted(names)


def _present(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """`names`, when each is a linear layer of the model: PEFT would quietly skip some
    missing ones, and registration would then refuse the adapter."""
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    missing = sorted(set(names) - linear)
    if missing:
        raise ValueError(
            f"the base model has no linear layer named {', '.join(missing)}; "
            f"its linear layers are {', '.join(sorted(linear))}"
        )
    return list(names)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model: PeftModel, base_model: Path, output_dir: Path) -> None:
    """Exactly the two adapter files; the config names the base model as it was given."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; give the trainer a new directory")
    model.peft_config[model.active_adapter].base_model_name_or_path = str(base_model)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as staging:
        # save_pretrained also writes a README.md model card: only the adapter files move on.
        model.save_pretrained(staging, safe_serialization=True)
        for name in ADAPTER_FILES:
            (Path(staging) / name).rename(output_dir / name)
