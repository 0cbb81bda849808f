"""One DPO run: preference pairs and a parent adapter in, a new LoRA adapter directory out.

TRL's DPOTrainer does the optimisation (sigmoid DPO loss, AdamW with a linear schedule, the
reference handled for a PEFT policy: the parent version, or the base model for a first
version). It is handed the exact token ids a request to the server produces
(rendering.encode_pair): tokenizing rendered text a second time could split the chat
template's boundary differently, or add a BOS the server never sends. Runs in float32 on the
CPU; the same inputs and seed give the same bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from loraloop.adapters.policy import TrainingPolicy

from .lora import ProgressCallback, fresh_lora, save_adapter, trainable_parameters
from .pairs import PreferencePair
from .rendering import encode_pair


@dataclass(frozen=True)
class TrainResult:
    trainable_parameters: int
    steps: int
    final_loss: float  # the DPO loss at the last step
    train_reward_accuracy: float | None  # last step: share of pairs whose chosen won


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
        self.last = {"step": state.global_step, "loss": float(logs["loss"]),
                     "reward_accuracy": float(logs.get("rewards/accuracies", 0.0)),
                     "epoch": float(logs.get("epoch", 0.0))}
        if self.on_progress is not None:
            self.on_progress(self.last)


def train_dpo(
    base_model: Path,
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
    adapter_model.safetensors, nothing else, into `output_dir`."""
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    with torch.random.fork_rng(devices=[]):  # seeds a fresh LoRA's lora_A, leaks nothing
        torch.manual_seed(policy.seed)
        model = _load_policy(Path(base_model), parent_adapter, policy.rank, target_modules)
    dataset = Dataset.from_list([
        {"prompt_ids": list(e.prompt), "chosen_ids": list(e.chosen),
         "rejected_ids": list(e.rejected)}
        for e in (encode_pair(tokenizer, pair) for pair in pairs)
    ])
    progress = _Progress(on_progress)
    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        trainer = _ServedTokensDPOTrainer(
            model=model, ref_model=None, args=_config(policy, scratch),
            train_dataset=dataset, processing_class=tokenizer, callbacks=[progress],
        )
        trainer.train()
    save_adapter(model, Path(base_model), Path(output_dir))
    last = progress.last
    return TrainResult(trainable_parameters(model), trainer.state.global_step,
                       last.get("loss", float("nan")), last.get("reward_accuracy"))


def _config(policy: TrainingPolicy, scratch: str) -> DPOConfig:
    return DPOConfig(
        output_dir=scratch, beta=policy.beta, learning_rate=policy.learning_rate,
        num_train_epochs=policy.epochs, per_device_train_batch_size=policy.batch_size,
        seed=policy.seed, data_seed=policy.seed, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0,
        # rendering.encode_pair already bounds prompt and answer lengths.
        max_length=None,
        use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )


def _load_policy(base_model: Path, parent_adapter: Path | None, rank: int,
                 target_modules: Sequence[str] | None) -> PeftModel:
    if parent_adapter is not None and target_modules is not None:
        raise ValueError("a run from a parent adapter keeps its target modules; give "
                         "target_modules only for a fresh LoRA")
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if parent_adapter is not None:
        # Without is_trainable the adapter loads frozen and nothing trains.
        return PeftModel.from_pretrained(base, parent_adapter, is_trainable=True)
    return fresh_lora(base, rank, target_modules)
