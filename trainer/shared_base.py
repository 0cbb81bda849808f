"""The trainer process's one copy of the base model, on its device, lent in turn to whoever
needs it: training (which wraps it in a trainable LoRA), scoring and the gate (which switch
loaded adapters on it). A base model is gigabytes; LoRA layers are megabytes, so the users
wrap and unwrap the same weights rather than each loading a copy.

Lending is sequential: the trainer does one thing at a time. Whoever borrows the bare base
first makes the previous borrower unwrap its LoRA layers (PEFT's `unload`, which restores the
original modules without merging anything into the weights).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .device import CPU_FLOAT32, Placement


class SharedBase:
    def __init__(self, path: Path, placement: Placement = CPU_FLOAT32) -> None:
        self.path, self.placement = Path(path), placement
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._model = AutoModelForCausalLM.from_pretrained(self.path, dtype=placement.dtype)
        self._model.to(placement.device)  # type: ignore[arg-type]  # wraps(Module.to): unbound
        if placement.device.type == "cpu":
            _own_copy(self._model)
        self._model.eval()
        self._model.requires_grad_(False)  # only LoRA weights ever train
        self._give_back: Callable[[], None] | None = None

    @classmethod
    def of(cls, base: SharedBase | Path) -> SharedBase:
        """`base` itself, or a base loaded for this one caller in float32 on the CPU
        (offline tools and tests; the trainer process always passes its shared one)."""
        return base if isinstance(base, SharedBase) else cls(Path(base))

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    def borrow(self, give_back: Callable[[], None] | None = None) -> PreTrainedModel:
        """The base with no LoRA layers in it. `give_back` unwraps what the new borrower is
        about to wrap; it runs when the next borrower comes."""
        if self._give_back is not None:
            previous, self._give_back = self._give_back, None
            previous()
        self._give_back = give_back
        return self._model

    def returned(self, model: torch.nn.Module) -> None:
        """`model` (the bare base, unwrapped by its borrower) is back in the lender's hands."""
        if model is not self._model:
            raise ValueError("returned a model that is not this shared base")
        self._give_back = None
        self._model.eval()
        self._model.requires_grad_(False)


@torch.no_grad()
def _own_copy(model: torch.nn.Module) -> None:
    """Weights loaded on the CPU map the safetensors file: its pages come in on first use
    (a run would seem to need the weights twice over) and can be dropped and re-read under
    memory pressure. A copy of each tensor, one at a time, makes them the process's own."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        tensor.data = tensor.data.clone()
