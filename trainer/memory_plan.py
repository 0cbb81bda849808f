"""What a DPO run needs in memory on its device, estimated before it starts, and what it used.

A run that cannot fit is refused with the figures (RunWontFit) instead of dying mid-way; the
estimate and the measured peak are recorded with every run that does start. The estimate is
for a Llama-style decoder (attention, gated MLP, RMSNorm), the layout of every base here.
"""

from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedConfig

from .device import Placement

GIB = 1 << 30
# Bytes per trainable LoRA parameter: the float32 weight, its float32 gradient and AdamW's two
# float32 moments. PEFT keeps adapter weights in float32 on a half-precision base, so they are
# their own master copy.
LORA_STATE_BYTES = 4 + 4 + 2 * 4
# A run from a parent version also holds TRL's frozen float32 copy of it, the reference.
REFERENCE_ADAPTER_BYTES = 4


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    weight_bytes: int  # as loaded, in the placement's dtype
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        config = model.config
        if not isinstance(config, PreTrainedConfig):
            raise TypeError(f"{type(model).__name__} is not a transformers model (no config)")
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab=config.vocab_size,
        )


@dataclass(frozen=True)
class RunShape:
    micro_batch_pairs: int
    sequence_tokens: int  # the longest prompt + answer: every sequence is padded to it
    lora_parameters: int
    from_parent: bool  # TRL then keeps a frozen copy of the parent adapter as the reference
    gradient_checkpointing: bool
    activation_bytes: int  # 2 under bfloat16/float16 autocast, 4 in float32


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    lora_state: int
    activations: int
    reference: int

    @property
    def total(self) -> int:
        return self.weights + self.lora_state + self.activations + self.reference


def estimate(model: ModelShape, run: RunShape) -> MemoryPlan:
    lora = run.lora_parameters * (
        LORA_STATE_BYTES + (REFERENCE_ADAPTER_BYTES if run.from_parent else 0)
    )
    # DPO runs chosen and rejected answers as one batch: 2 sequences per pair.
    sequences = 2 * run.micro_batch_pairs
    tokens = sequences * run.sequence_tokens
    layer = tokens * _saved_per_token_per_layer(model, run)
    if run.gradient_checkpointing:
        # Each layer's input is kept; in the backward pass one layer at a time is recomputed
        # and holds its full set of saved tensors.
        kept = tokens * model.hidden * run.activation_bytes * model.layers + layer
    else:
        kept = layer * model.layers
    # Around the layers: the embedding output and the final norm (hidden-size rows, float32
    # in the norm) and TRL's fused LM head, which computes per-token log-probabilities in
    # tiles and keeps one float32 row of logits per token at most.
    edges = tokens * (model.hidden * (run.activation_bytes + 4) + model.vocab * 4)
    return MemoryPlan(model.weight_bytes, lora, kept + edges, _reference_pass(model, run, tokens))


def _saved_per_token_per_layer(model: ModelShape, run: RunShape) -> int:
    """Bytes one token leaves saved for the backward pass in one decoder layer.

    With frozen base weights the backward pass still needs every tensor that a gradient
    flows through to reach the LoRA weights of earlier layers. Per token, in order:
      attention block: the layer input and the RMSNorm output (2 h), and RMSNorm's float32
        upcast of its input (h at 4 bytes); q (h), k and v (2 kv, kv = h * kv_heads / heads),
        their rotary-embedded copies (h + 2 kv); the attention output entering o_proj (h);
        the softmax probabilities, one row of `sequence_tokens` scores per head (heads * L:
        the quadratic term, saved by the math attention kernel that a padded batch uses);
      MLP block: the residual sum and the RMSNorm output (2 h) with its float32 upcast
        (h at 4 bytes); gate and up projections (2 i); SiLU(gate) and the product fed to
        down_proj (2 i).
    Hidden-size tensors: 2 + 1 + 1 + 1 + 2 = 7 h, intermediate: 4 i, key/value: 4 kv, at
    the activation dtype; 2 h in float32; heads * L scores at the activation dtype.
    """
    kv = model.hidden * model.kv_heads // model.heads
    b = run.activation_bytes
    return (
        (7 * model.hidden + 4 * model.intermediate + 4 * kv) * b
        + 2 * model.hidden * 4
        + model.heads * run.sequence_tokens * b
    )


def _reference_pass(model: ModelShape, run: RunShape, tokens: int) -> int:
    """The reference model's forward pass runs without gradients: nothing is kept between
    layers, so it costs one layer's working set at a time, the widest moment being the MLP
    (gate, up and their product: 3 i per token) or the attention scores (heads * L)."""
    widest = max(3 * model.intermediate, model.heads * run.sequence_tokens)
    return tokens * (widest + 2 * model.hidden) * run.activation_bytes


@dataclass(frozen=True)
class RunMemory:
    """What a run was estimated to need and what it used, recorded with the run."""

    estimate_bytes: int
    peak_bytes: int | None
    placement: Placement

    def metrics(self) -> dict[str, float]:
        figures = {"memory_estimate_bytes": float(self.estimate_bytes)}
        if self.peak_bytes is not None:
            figures["memory_peak_bytes"] = float(self.peak_bytes)
        return figures


class RunWontFit(Exception):
    """A run whose estimate exceeds the memory free for it: refused before training."""


class RunOutOfMemory(Exception):
    """The device ran out of memory during training, whatever the plan said."""


@contextlib.contextmanager
def out_of_memory_fails(placement: Placement, plan: MemoryPlan) -> Iterator[None]:
    """An out-of-memory error inside becomes RunOutOfMemory, with the plan's figure (a
    CUDA OOM's message alone does not say what the run was expected to need)."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise RunOutOfMemory(
            f"out of memory on {placement.device_name} while training (estimated "
            f"{gib(plan.total)} GiB): {exc or type(exc).__name__}"
        ) from exc


def check_fits(plan: MemoryPlan, placement: Placement) -> None:
    """Raise RunWontFit unless the plan fits. The base's weights are loaded already (they are
    shared by every run of this process), so they count as available to the run."""
    available, limit = free_bytes(placement)
    available += plan.weights
    if limit is not None and limit < available:
        available, cap = limit, f" (memory limit {gib(limit)} GiB)"
    else:
        cap = ""
    if plan.total > available:
        raise RunWontFit(
            f"needs {gib(plan.total)} GiB, {gib(available)} GiB free on "
            f"{placement.device_name}{cap}: weights {gib(plan.weights)}, LoRA and optimizer "
            f"{gib(plan.lora_state)}, activations {gib(plan.activations)}, reference pass "
            f"{gib(plan.reference)} GiB; lower the policy's train.micro_batch_tokens, turn on "
            "train.gradient_checkpointing, or train in bfloat16"
        )


def gib(n: int) -> str:
    return f"{n / GIB:.1f}" if n >= GIB / 10 else f"{n / GIB:.3f}"


def free_bytes(placement: Placement) -> tuple[int, int | None]:
    """Memory free on the device now, and the configured cap, if any."""
    if placement.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(placement.device)
        return free, placement.memory_limit_bytes
    return _host_available(), placement.memory_limit_bytes


def _host_available() -> int:
    """MemAvailable, or what the container's cgroup still allows when that is less."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    available = next(
        int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")
    )
    cgroup = Path("/sys/fs/cgroup")
    with contextlib.suppress(OSError, ValueError):
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    return available


class PeakMeter:
    """The run's peak memory on its device: CUDA's peak allocation since the run began, or
    on the CPU the weights plus the process's peak resident-set growth over the run."""

    def __init__(self, placement: Placement, weight_bytes: int) -> None:
        self.placement, self.weight_bytes = placement, weight_bytes
        self.peak_bytes: int | None = None

    @contextlib.contextmanager
    def measuring(self) -> Iterator[PeakMeter]:
        if self.placement.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.placement.device)
            try:
                yield self
            finally:
                self.peak_bytes = torch.cuda.max_memory_allocated(self.placement.device)
            return
        start = resident_bytes()
        reset = _reset_peak_rss()
        try:
            yield self
        finally:
            peak = _peak_rss_bytes() if reset else _lifetime_peak_rss_bytes()
            self.peak_bytes = self.weight_bytes + max(0, peak - start)


def _status_kib(field: str) -> int:
    line = next(
        line
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith(field + ":")
    )
    return int(line.split()[1])


def resident_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def _peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def _reset_peak_rss() -> bool:
    """Linux resets the peak resident set (VmHWM) on writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _lifetime_peak_rss_bytes() -> int:
    # Where the peak cannot be reset: the process's lifetime peak, an overstatement.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def micro_batch_pairs(batch_size: int, sequence_tokens: int, token_budget: int) -> int:
    """The largest divisor of `batch_size` whose micro-batch (two sequences per pair, each
    padded to `sequence_tokens`) fits `token_budget`; at least one pair. A divisor, so that
    accumulating gradients over equal micro-batches gives the full batch's mean."""
    fits = max(1, token_budget // (2 * max(1, sequence_tokens)))
    return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= fits)


def accumulation_steps(batch_size: int, micro_pairs: int) -> int:
    return math.ceil(batch_size / micro_pairs)
