"""Where the trainer's models live and in which precision, chosen once per trainer process.

`auto` picks the first CUDA device when there is one (bfloat16 where the card supports it,
float16 with loss scaling where it does not) and the CPU in float32 otherwise. A choice the
machine cannot honour is refused at start-up, with the reason, rather than falling back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DeviceChoice = Literal["auto", "cuda", "cpu"]
DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class PlacementRefused(ValueError):
    """A device or dtype this machine cannot train with."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # of the base model's weights; LoRA weights stay float32
    # A cap on the memory a run may use on the device (containers, tests): the smaller of it
    # and what is free is what a run must fit in.
    memory_limit_bytes: int | None = None

    @property
    def device_name(self) -> str:
        return str(self.device)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def labels(self) -> dict[str, str]:
        """As recorded with each run."""
        return {"device": self.device_name, "dtype": self.dtype_name}

    @property
    def mixed_precision(self) -> bool:
        """Half-precision base weights: the forward runs under autocast, and the optimizer
        updates float32 LoRA weights (PEFT keeps adapter weights in float32)."""
        return self.dtype != torch.float32

    def trainer_flags(self) -> dict:
        """The transformers TrainingArguments that train on this placement."""
        return {
            "use_cpu": self.device.type == "cpu",
            "bf16": self.dtype == torch.bfloat16,
            "fp16": self.dtype == torch.float16,
        }


CPU_FLOAT32 = Placement(torch.device("cpu"), torch.float32)


def choose_placement(
    device: DeviceChoice = "auto",
    dtype: DtypeChoice = "auto",
    *,
    memory_limit_bytes: int | None = None,
) -> Placement:
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise PlacementRefused(
            "--device cuda, but torch sees no CUDA device (is this torch "
            "build a CPU one, or CUDA_VISIBLE_DEVICES empty?); use "
            "--device cpu or auto"
        )
    on_cuda = device == "cuda" or (device == "auto" and cuda)
    where = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    chosen = _auto_dtype(on_cuda) if dtype == "auto" else DTYPES[dtype]
    if chosen == torch.float16 and not on_cuda:
        raise PlacementRefused(
            "float16 training needs a CUDA device (loss scaling runs there); "
            "on the CPU use bfloat16 or float32"
        )
    if chosen == torch.bfloat16 and on_cuda and not torch.cuda.is_bf16_supported():
        raise PlacementRefused(
            f"{torch.cuda.get_device_name(where)} does not support "
            "bfloat16; use --dtype float16 (or auto)"
        )
    return Placement(where, chosen, memory_limit_bytes)


def _auto_dtype(on_cuda: bool) -> torch.dtype:
    if not on_cuda:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
