"""How long a DPO run trains: enough optimizer steps, not only a number of epochs.

A few epochs over a round's handful of pairs are a handful of steps, too few to move a LoRA
from where it started; a floor on the steps makes every run train enough to be judged. The
floor is met in whole epochs, so every pair is seen as often as every other.
"""

from __future__ import annotations

import math

from loraloop.adapters.training_policy import TrainingPolicy


def optimizer_steps(pairs: int, policy: TrainingPolicy) -> int:
    """The policy's epochs in batches of batch_size, or more whole epochs when those would
    take fewer than min_steps steps."""
    batches = math.ceil(pairs / policy.batch_size)
    epochs = max(policy.epochs, math.ceil(policy.min_steps / batches))
    return epochs * batches
