"""The null adapter: a LoRA whose factors are all zeros, through which requests for the base
model run on engines that would otherwise give them someone else's adapter.

vLLM marks the tokens of a request without a LoRA with slot index -1. Its CUDA kernels skip
such tokens, but the torch ops its CPU build uses (`vllm/lora/ops/torch_ops/lora_ops.py`,
`lora_b_weights[lora_indices_tensor]`) index the stacked slot weights with it, and -1 picks
the last slot: in a batch that also holds adapters, base-model tokens got whichever adapter
sat there, and the prefix cache kept the keys and values computed that way. Giving those
requests an adapter of their own, whose update B @ A is exactly zero, gives them a real slot
and leaves their answers those of the base model.

The files are written from the base model's safetensors headers (no weights are read) into a
private directory that lives as long as the engine: vLLM reads an adapter's files again after
evicting it from its host-memory cache.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraloop.adapters.base_model import linear_shapes, local_model_dir
from loraloop.adapters.names import CONFIG_FILE, WEIGHTS_FILE

# Registry versions get row ids from 1 upwards as their engine LoRA ids, and vLLM needs ids
# below 2**31: the largest one can never be a version's.
NULL_LORA_ID = 2**31 - 1
# A name no tenant's adapter can have (served names are "tenant/name@version"): vLLM compares
# LoRA requests by name.
NULL_LORA_NAME = "loraloop:null-adapter"
# Attention's query projection has a LoRA slot in every decoder vLLM supports; any module
# would do, since vLLM zeroes the slot's modules an adapter does not name.
PREFERRED_MODULE = "q_proj"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


class NullAdapter:
    """The null adapter's files in a temporary directory, until `close()`."""

    def __init__(self, model: str) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="loraloop-null-adapter-")
        self.path = Path(self._directory.name)
        write_null_adapter(local_model_dir(model), self.path, base_model_name=model)

    def close(self) -> None:
        self._directory.cleanup()


def write_null_adapter(model_dir: Path, target: Path, *, base_model_name: str) -> None:
    """A PEFT-style rank-1 LoRA of zeros on one module kind of every decoder layer."""
    shapes = linear_shapes(model_dir)  # module -> (out, in)
    kind = module_kind(shapes)
    tensors = {}
    for module, (out_features, in_features) in shapes.items():
        if module.rsplit(".", 1)[-1] == kind:
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.zeros(1, in_features)
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.zeros(out_features, 1)
    save_file(tensors, target / WEIGHTS_FILE)
    (target / CONFIG_FILE).write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 1,
                "lora_alpha": 1,
                "target_modules": [kind],
                "lora_dropout": 0.0,
                "bias": "none",
                "base_model_name_or_path": base_model_name,
            }
        )
    )


def module_kind(shapes) -> str:
    """The preferred module kind if every decoder layer has it, else the first that does."""
    kinds_per_layer: dict[str, set[str]] = {}
    for module in shapes:
        if layer := _LAYER.search(module):
            kinds_per_layer.setdefault(layer.group(1), set()).add(module.rsplit(".", 1)[-1])
    common = set.intersection(*kinds_per_layer.values()) if kinds_per_layer else set()
    if not common:
        raise ValueError(
            "the base model has no linear module kind in every decoder layer, "
            "so no null adapter can be built for it"
        )
    return PREFERRED_MODULE if PREFERRED_MODULE in common else sorted(common)[0]
