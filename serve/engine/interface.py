"""The boundary between the HTTP layer and whatever runs the model.

An engine knows token ids, sampling settings and adapter files; it knows nothing about HTTP,
chat templates or tenants. Two implementations: vLLM (the product) and transformers + PEFT
(the test oracle and benchmark baseline).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class AdapterRef:
    """One immutable adapter version, as the engine needs it.

    `lora_int_id` is unique per version and never reused: vLLM keys its caches (LoRA slots,
    prefix cache) by it, so reusing an id for other weights would serve stale state.
    """

    adapter_id: str  # "tenant/name"
    version: int
    lora_int_id: int
    path: Path

    @property
    def served_name(self) -> str:
        return f"{self.adapter_id}@{self.version}"


@dataclass(frozen=True)
class OutputConstraint:
    """A grammar the output must follow, enforced while sampling (structured outputs)."""

    kind: Literal["json_schema", "json_object", "structural_tag"]
    spec: str | None = None  # JSON text: the schema, or the structural tag; none for an object
    param: str = "response_format"  # the request field it came from, for error messages


@dataclass(frozen=True)
class SamplingSpec:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives per token; None: no logprobs at all
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    constraint: OutputConstraint | None = None
    # Tool-call parsers read some formats' markers, which some tokenizers call special.
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # most likely first, at most SamplingSpec.logprobs


@dataclass(frozen=True)
class GenerationDelta:
    """What one engine step added to one sequence."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: FinishReason | None


class Engine(Protocol):
    max_model_len: int
    active_requests: int  # generations started and not yet finished or aborted
    aborted_requests: int  # generations stopped before they finished (client gone, error)

    async def start(self) -> None: ...

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load the adapter's weights; raises AdapterUnavailable if they cannot be used."""

    async def remove_adapter(self, adapter: AdapterRef) -> None: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        adapter: AdapterRef | None,
        request_id: str,
        cache_salt: str | None = None,
    ) -> AsyncGenerator[GenerationDelta, None]:
        """Stream deltas; closing the iterator early aborts the request in the engine.

        `cache_salt` partitions the prefix cache: requests with different salts never reuse
        each other's cached blocks (whose timing would otherwise leak one tenant's prompts
        to another)."""

    def is_healthy(self) -> bool: ...

    async def shutdown(self) -> None: ...
