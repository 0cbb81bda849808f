"""How a training run spends memory: activation checkpointing and the micro-batch.

Neither changes what is learned (the optimizer still steps once per `batch_size` pairs); they
trade speed for memory, so that the default policy fits a real base model on one device.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ComputePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gradient_checkpointing: bool = Field(
        True,
        description="keep only each layer's input for the backward pass and recompute "
        "the rest (about a third more compute; activation memory falls from every layer's "
        "intermediates to one layer's)",
    )
    micro_batch_tokens: int = Field(
        8192,
        ge=256,
        le=1_048_576,
        description="tokens (chosen and rejected answers with their "
        "prompts, padded to the longest pair) one forward pass may hold; a batch larger than "
        "this is split into equal micro-batches whose gradients accumulate to the policy's "
        "batch_size",
    )
