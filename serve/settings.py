"""The server's settings: one object per process, from CLI flags over LORALOOP_* variables.

Validated once at start-up; every refusal says which setting to change and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraloop.adapters.names import is_valid_adapter_id

# The ranks vLLM's LoRA kernels are built for.
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class RequestLimits(BaseModel):
    """Upper bounds on what one API request may ask for."""

    max_tokens: int = Field(1024, ge=1, description="largest max_tokens a request may set")
    default_max_tokens: int = Field(256, ge=1, description="used when a request sets none")
    max_n: int = Field(8, ge=1, le=128)
    max_prompts: int = Field(16, ge=1, le=1024, description="prompts in one /v1/completions")
    max_stop: int = Field(4, ge=0, le=64, description="stop sequences per request")
    max_stop_chars: int = Field(64, ge=1)
    max_top_logprobs: int = Field(20, ge=0, le=100)
    max_messages: int = Field(256, ge=1)
    max_prompt_chars: int = Field(200_000, ge=1, description="characters over all prompt text")

    @model_validator(mode="after")
    def _default_within_bound(self) -> RequestLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) exceeds "
                f"limits.max_tokens ({self.max_tokens}); lower the default or raise the bound"
            )
        return self


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORALOOP_", env_nested_delimiter="__", extra="forbid"
    )

    model: str = Field(description="base model: a local directory or a hub id")
    served_model_name: str | None = Field(None, description="defaults to the model's name")
    engine: Literal["vllm", "reference"] = "vllm"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="adapters served from start-up: tenant/name -> dir"
    )

    max_model_len: int = Field(2048, ge=32)
    max_loras: int = Field(8, ge=1, description="adapters resident in the engine at once")
    max_cpu_loras: int = Field(64, ge=1, description="adapters cached in host memory")
    max_lora_rank: int = 64
    dtype: str = "auto"
    enforce_eager: bool = False
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_gib: float | None = Field(None, gt=0, description="KV cache size; CPU engines")
    max_pending_requests: int = Field(
        64, ge=1, description="requests admitted at once; beyond it clients get 503"
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)

    @property
    def base_model_name(self) -> str:
        return self.served_model_name or self.model.rstrip("/").rsplit("/", 1)[-1]

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_supported(cls, rank: int) -> int:
        if rank not in SUPPORTED_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {SUPPORTED_LORA_RANKS}")
        return rank

    @field_validator("adapters")
    @classmethod
    def _adapters_well_formed(cls, adapters: dict[str, Path]) -> dict[str, Path]:
        problems = [
            f"'{name}' is not tenant/name (lowercase letters, digits, '.', '_', '-')"
            for name in adapters
            if not is_valid_adapter_id(name)
        ]
        problems += [f"{p} is not a directory" for p in adapters.values() if not p.is_dir()]
        if problems:
            raise ValueError("; ".join(problems))
        return adapters

    @model_validator(mode="after")
    def _cache_holds_the_slots(self) -> ServeSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least "
                f"max_loras ({self.max_loras})"
            )
        return self
