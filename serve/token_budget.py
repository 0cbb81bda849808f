"""Per-tenant token rate: a token bucket per tenant over generated tokens.

A request is admitted while its tenant's bucket is above zero; what it actually generated is
taken out when it finishes, so a long answer can take the bucket below zero and the tenant
waits for the refill. The bucket holds one minute's worth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBudget:
    def __init__(self, tokens_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(tokens_per_minute)
        self.refill_per_s = tokens_per_minute / 60
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (level, as of when)

    def _level(self, tenant: str) -> float:
        level, since = self._buckets.get(tenant, (self.capacity, self.clock()))
        now = self.clock()
        level = min(self.capacity, level + (now - since) * self.refill_per_s)
        self._buckets[tenant] = (level, now)
        return level

    def wait_s(self, tenant: str) -> int:
        """0 when the tenant may start a request; otherwise whole seconds until it may."""
        level = self._level(tenant)
        return 0 if level > 0 else max(1, math.ceil((1 - level) / self.refill_per_s))

    def spend(self, tenant: str, tokens: int) -> None:
        level = self._level(tenant)
        self._buckets[tenant] = (level - tokens, self.clock())
