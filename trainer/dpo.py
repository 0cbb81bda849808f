"""One DPO run: preference pairs and a parent adapter in, a new LoRA adapter directory out.

TRL's DPOTrainer does the optimisation (sigmoid DPO loss, AdamW with a linear schedule, the
reference handled for a PEFT policy: the parent version, or the base model for a first
version). It is handed the exact token ids a request to the server produces
(rendering.encode_pair): tokenizing rendered text a second time could split the chat
template's boundary differently, or add a BOS the server never sends. Trains on the trainer's
one copy of the base (shared_base.py), on its device and in its dtype, a batch split into
micro-batches that fit policy.train.micro_batch_tokens; in float32 on the CPU the same inputs
and seed give the same bytes.
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from loraloop.adapters.training_policy import TrainingPolicy

from .device import Placement
from .lora import ProgressCallback, fresh_lora, save_adapter, trainable_parameters
from .memory_plan import (
    ModelShape,
    PeakMeter,
    RunMemory,
    RunShape,
    accumulation_steps,
    check_fits,
    estimate,
    micro_batch_pairs,
    out_of_memory_fails,
)
from .pairs import PreferencePair
from .rendering import encode_pair
from .shared_base import SharedBase
from .steps import optimizer_steps


@dataclass(frozen=True)
class TrainResult:
    trainable_parameters: int
    steps: int
    final_loss: float  # the DPO loss at the last step
    train_reward_accuracy: float | None  # last step: share of pairs whose chosen won
    memory: RunMemory  # the plan's estimate and the measured peak, on which device


class _ServedTokensDPOTrainer(DPOTrainer):
    """DPOTrainer on a dataset that already holds prompt_ids, chosen_ids and rejected_ids."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class _Progress(TrainerCallback):
    """Hands each logged step to the caller (which logs it and renews its lease)."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.last: dict = {}

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if not logs or "loss" not in logs:
            return
        self.last = {
            "step": state.global_step,
            "loss": float(logs["loss"]),
            "reward_accuracy": float(logs.get("rewards/accuracies", 0.0)),
            "epoch": float(logs.get("epoch", 0.0)),
        }
        if self.on_progress is not None:
            self.on_progress(self.last)


def train_dpo(
    base: SharedBase | Path,
    parent_adapter: Path | None,
    pairs: Sequence[PreferencePair],
    policy: TrainingPolicy,
    output_dir: Path,
    *,
    on_progress: ProgressCallback | None = None,
    target_modules: Sequence[str] | None = None,
) -> TrainResult:
    """Train from `parent_adapter` (or a fresh LoRA of rank policy.rank on `target_modules`,
    by default the attention projections) on `pairs` and write adapter_config.json and
    adapter_model.safetensors, nothing else, into `output_dir`. Trains on the shared base's
    device and dtype (a path: a base loaded for this run, float32 on the CPU). Refused with
    RunWontFit before training when the memory plan does not fit; RunOutOfMemory when the
    device runs out all the same."""
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair")
    shared = SharedBase.of(base)
    encoded = [encode_pair(shared.tokenizer, pair) for pair in pairs]
    dataset = Dataset.from_list(
        [
            {
                "prompt_ids": list(e.prompt),
                "chosen_ids": list(e.chosen),
                "rejected_ids": list(e.rejected),
            }
            for e in encoded
        ]
    )
    # TRL pads a micro-batch to its longest pair; the longest of all bounds every one.
    longest = max(len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in encoded)
    micro = micro_batch_pairs(policy.batch_size, longest, policy.train.micro_batch_tokens)
    progress = _Progress(on_progress)
    with _lora_on(shared, parent_adapter, policy, target_modules) as model:
        trainable = trainable_parameters(model)
        plan = estimate(
            ModelShape.of(model.get_base_model()),
            RunShape(
                micro_batch_pairs=micro,
                sequence_tokens=longest,
                lora_parameters=trainable,
                from_parent=parent_adapter is not None,
                gradient_checkpointing=policy.train.gradient_checkpointing,
                activation_bytes=2 if shared.placement.mixed_precision else 4,
            ),
        )
        check_fits(plan, shared.placement)
        meter = PeakMeter(shared.placement, plan.weights)
        with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
            trainer = _ServedTokensDPOTrainer(
                model=model,
                ref_model=None,
                args=_config(
                    policy, scratch, optimizer_steps(len(pairs), policy), micro, shared.placement
                ),
                train_dataset=dataset,
                processing_class=shared.tokenizer,
                callbacks=[progress],
            )
            with meter.measuring(), out_of_memory_fails(shared.placement, plan):
                trainer.train()
            steps = trainer.state.global_step
            del trainer  # its optimizer state, before the base goes back to its other users
        save_adapter(model, shared.path, Path(output_dir))
    last = progress.last
    return TrainResult(
        trainable,
        steps,
        last.get("loss", float("nan")),
        last.get("reward_accuracy"),
        RunMemory(plan.total, meter.peak_bytes, shared.placement),
    )


def _config(
    policy: TrainingPolicy, scratch: str, steps: int, micro_pairs: int, placement: Placement
) -> DPOConfig:
    return DPOConfig(
        output_dir=scratch,
        beta=policy.beta,
        learning_rate=policy.learning_rate,
        # Optimizer steps rather than epochs: steps.optimizer_steps counts the epochs in.
        max_steps=steps,
        per_device_train_batch_size=micro_pairs,
        gradient_accumulation_steps=accumulation_steps(policy.batch_size, micro_pairs),
        gradient_checkpointing=policy.train.gradient_checkpointing,
        seed=policy.seed,
        data_seed=policy.seed,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        # rendering.encode_pair already bounds prompt and answer lengths.
        max_length=None,
        **placement.trainer_flags(),
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


@contextlib.contextmanager
def _lora_on(
    shared: SharedBase,
    parent_adapter: Path | None,
    policy: TrainingPolicy,
    target_modules: Sequence[str] | None,
) -> Iterator[PeftModel]:
    """A trainable LoRA on the shared base: the parent's weights, or a fresh one seeded by
    the policy. Afterwards the base goes back as it was lent: no LoRA layers, no training
    hooks (checkpointing, the input-gradient hook, TRL's fused LM head)."""
    if parent_adapter is not None and target_modules is not None:
        raise ValueError(
            "a run from a parent adapter keeps its target modules; give "
            "target_modules only for a fresh LoRA"
        )
    bare = shared.borrow()
    patched_forward = "forward" in vars(bare)
    model = None
    try:
        with torch.random.fork_rng(devices=[]):  # seeds a fresh LoRA's lora_A, leaks nothing
            torch.manual_seed(policy.seed)
            if parent_adapter is not None:
                # Without is_trainable the adapter loads frozen and nothing trains.
                model = PeftModel.from_pretrained(bare, parent_adapter, is_trainable=True)
            else:
                model = fresh_lora(bare, policy.rank, target_modules)
        yield model
    finally:
        if model is not None:
            model.unload()
        bare.gradient_checkpointing_disable()
        if hasattr(bare, "_require_grads_hook"):
            bare.disable_input_require_grads()
        if not patched_forward:
            vars(bare).pop("forward", None)
        shared.returned(bare)
        _release_cached_memory(shared.placement)


def _release_cached_memory(placement: Placement) -> None:
    # The finished run's tensors are garbage now; on CUDA the caching allocator would
    # otherwise keep their blocks from the next run's free-memory check.
    gc.collect()
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()
