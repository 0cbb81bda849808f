"""Rest after failure: work that failed waits before it is tried again, longer each time in
a row, so that one tenant's broken policy or judge neither spins the trainer nor takes the
time of another tenant's work.

In memory, per trainer: a restarted trainer tries everything once more, which is what an
operator restarting it after a fix wants.
"""

from __future__ import annotations

import time

MAX_REST_S = 600.0  # the longest rest: a fixed policy is picked up within ten minutes


class Backoff:
    """The first rest `first_s`, doubled at each failure in a row, at most `max_s`; a
    success ends the series."""

    def __init__(self, first_s: float, max_s: float = MAX_REST_S) -> None:
        self.first_s, self.max_s = first_s, max(first_s, max_s)
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}  # key -> monotonic time it may be tried again

    def failed(self, key: str, *, at_least_s: float = 0.0) -> float:
        """Rest `key`; the seconds it rests."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        rest_s = max(at_least_s, min(self.max_s, self.first_s * 2 ** min(failures - 1, 32)))
        self._until[key] = time.monotonic() + rest_s
        return rest_s

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._until.pop(key, None)

    def resting(self, key: str) -> bool:
        return self._until.get(key, 0.0) > time.monotonic()
