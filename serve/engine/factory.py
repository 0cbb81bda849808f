"""Builds the engine the settings name; the only module that decides between engines."""

from __future__ import annotations

import torch

from ..settings import ServeSettings
from .interface import Engine

# Host memory for the KV cache when vLLM runs on a CPU and the operator set no size: vLLM's
# own default (a fraction of all memory) fails on small machines.
DEFAULT_CPU_KV_CACHE_GIB = 1.0


def create_engine(settings: ServeSettings) -> Engine:
    if settings.engine == "reference":
        from .reference import ReferenceEngine

        dtype = "float32" if settings.dtype == "auto" else settings.dtype
        return ReferenceEngine(settings.model, max_model_len=settings.max_model_len, dtype=dtype)
    from .vllm_engine import VLLMConfig, VLLMEngine  # imports vLLM: only when it is used

    on_cuda = torch.cuda.is_available()
    kv_cache_gib = settings.kv_cache_gib
    if kv_cache_gib is None and not on_cuda:
        kv_cache_gib = DEFAULT_CPU_KV_CACHE_GIB
    # vLLM's CUDA LoRA kernels skip tokens without an adapter (slot index -1); its CPU ops
    # index the slots with -1 and so apply the last slot's adapter to them in mixed batches.
    # Off CUDA, base-model requests therefore run through the null adapter, which gets a slot
    # (and a host-cache place) of its own on top of the operator's count for tenants.
    null_slot = 0 if on_cuda else 1
    return VLLMEngine(
        VLLMConfig(
            model=settings.model,
            max_model_len=settings.max_model_len,
            max_loras=settings.max_loras + null_slot,
            max_cpu_loras=settings.max_cpu_loras + null_slot,
            max_lora_rank=settings.max_lora_rank,
            max_logprobs=settings.limits.max_top_logprobs,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_gib=kv_cache_gib,
            null_adapter=not on_cuda,
        )
    )
