"""The memory plan's arithmetic, the refusal it makes, and the trainer's device choice."""

from __future__ import annotations

import pytest
import torch

from loraloop.trainer.device import (
    CPU_FLOAT32,
    Placement,
    PlacementRefused,
    choose_placement,
)
from loraloop.trainer.memory_plan import (
    GIB,
    MemoryPlan,
    ModelShape,
    RunShape,
    RunWontFit,
    accumulation_steps,
    check_fits,
    estimate,
    micro_batch_pairs,
)

# hidden 8, MLP 16, 2 layers, 2 heads sharing 1 key/value head (kv width 4), vocabulary 10.
SHAPE = ModelShape(
    parameters=250,
    weight_bytes=1000,
    hidden=8,
    intermediate=16,
    layers=2,
    heads=2,
    kv_heads=1,
    vocab=10,
)
RUN = RunShape(
    micro_batch_pairs=2,
    sequence_tokens=5,
    lora_parameters=100,
    from_parent=False,
    gradient_checkpointing=False,
    activation_bytes=4,
)


def test_the_estimate_adds_weights_lora_state_activations_and_the_reference_pass():
    plan = estimate(SHAPE, RUN)
    assert plan.weights == 1000
    assert plan.lora_state == 100 * 16  # weight, gradient, two AdamW moments: float32 each
    # 2 pairs = 4 sequences of 5 tokens = 20 tokens. Per token and layer:
    # (7 * 8 hidden + 4 * 16 intermediate + 4 * 4 kv) * 4 bytes + 2 * 8 float32 norm inputs
    # * 4 + 2 heads * 5 scores * 4 = 544 + 64 + 40 = 648 bytes; 2 layers; plus the edges:
    # 20 tokens * (8 * (4 + 4) + 10 * 4) = 2080.
    assert plan.activations == 20 * 648 * 2 + 2080
    # One layer's widest moment without gradients: 20 * (3 * 16 + 2 * 8) * 4.
    assert plan.reference == 5120
    assert plan.total == 1000 + 1600 + 28000 + 5120


def test_checkpointing_keeps_each_layer_input_and_one_layer_recomputed():
    plan = estimate(SHAPE, RunShape(**{**RUN.__dict__, "gradient_checkpointing": True}))
    assert plan.activations == 20 * 8 * 4 * 2 + 20 * 648 + 2080


def test_a_run_from_a_parent_also_holds_the_reference_adapter():
    plan = estimate(SHAPE, RunShape(**{**RUN.__dict__, "from_parent": True}))
    assert plan.lora_state == 100 * (16 + 4)


def test_half_precision_halves_what_is_kept_at_the_activation_dtype():
    full = estimate(SHAPE, RUN)
    half = estimate(SHAPE, RunShape(**{**RUN.__dict__, "activation_bytes": 2}))
    # Only RMSNorm's float32 upcasts and the float32 log-probability row stay as they were.
    fixed = 20 * 2 * (2 * 8 * 4) + 20 * (8 * 4 + 10 * 4)
    assert half.activations - fixed == (full.activations - fixed) // 2


@pytest.mark.parametrize(
    ("batch", "longest", "budget", "micro"),
    [
        (8, 100, 8192, 8),  # 8 pairs * 2 * 100 = 1600 tokens: all at once
        (8, 1000, 8192, 4),  # 4 * 2 * 1000 = 8000 fits, 8 would not
        (8, 1000, 5000, 2),
        (6, 1000, 8192, 3),  # 4 would fit, but 6 pairs only split evenly into 3s
        (8, 10_000, 8192, 1),  # one pair is the least, whatever the budget
    ],
)
def test_the_micro_batch_is_the_largest_even_split_within_the_token_budget(
    batch, longest, budget, micro
):
    assert micro_batch_pairs(batch, longest, budget) == micro
    assert accumulation_steps(batch, micro) * micro == batch


def test_a_plan_over_the_cap_is_refused_with_its_figures():
    plan = MemoryPlan(weights=2 * GIB, lora_state=GIB // 5, activations=3 * GIB, reference=GIB // 2)
    capped = Placement(torch.device("cpu"), torch.float32, memory_limit_bytes=4 * GIB)
    with pytest.raises(RunWontFit) as refused:
        check_fits(plan, capped)
    message = str(refused.value)
    assert message.startswith(
        "needs 5.7 GiB, 4.0 GiB free on cpu (memory limit 4.0 GiB): "
        "weights 2.0, LoRA and optimizer 0.2, activations 3.0, "
        "reference pass 0.5 GiB; "
    )
    check_fits(plan, Placement(torch.device("cpu"), torch.float32, memory_limit_bytes=6 * GIB))


def test_a_plan_over_free_memory_is_refused_without_a_cap(monkeypatch):
    from loraloop.trainer import memory_plan

    monkeypatch.setattr(memory_plan, "_host_available", lambda: GIB)
    plan = MemoryPlan(weights=GIB, lora_state=0, activations=2 * GIB, reference=0)
    with pytest.raises(RunWontFit, match=r"^needs 3.0 GiB, 2.0 GiB free on cpu: weights"):
        check_fits(plan, CPU_FLOAT32)  # the loaded weights count as the run's


def test_auto_trains_on_the_cpu_in_float32_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_placement("auto", "auto") == CPU_FLOAT32
    assert choose_placement("cpu", "bfloat16").trainer_flags() == {
        "use_cpu": True,
        "bf16": True,
        "fp16": False,
    }
    with pytest.raises(PlacementRefused, match="no CUDA device"):
        choose_placement("cuda", "auto")
    with pytest.raises(PlacementRefused, match="float16 training needs a CUDA device"):
        choose_placement("cpu", "float16")


def test_auto_on_a_gpu_is_bfloat16_where_supported_else_float16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    chosen = choose_placement("auto", "auto")
    assert (chosen.device_name, chosen.dtype_name) == ("cuda:0", "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    chosen = choose_placement("auto", "auto")
    assert chosen.dtype == torch.float16 and chosen.trainer_flags()["fp16"]


def test_the_settings_take_device_dtype_and_limit_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from loraloop.trainer.settings import TrainerSettings

    monkeypatch.setenv("LORALOOP_TRAINER_DEVICE", "cpu")
    monkeypatch.setenv("LORALOOP_TRAINER_DTYPE", "bfloat16")
    monkeypatch.setenv("LORALOOP_TRAINER_MEMORY_LIMIT_BYTES", str(8 * GIB))
    settings = TrainerSettings(model="m")
    chosen = choose_placement(
        settings.trainer_device,
        settings.trainer_dtype,
        memory_limit_bytes=settings.trainer_memory_limit_bytes,
    )
    assert chosen == Placement(torch.device("cpu"), torch.bfloat16, 8 * GIB)
    monkeypatch.setenv("LORALOOP_TRAINER_DTYPE", "int8")
    with pytest.raises(ValidationError, match="trainer_dtype"):
        TrainerSettings(model="m")
