"""Sign-in throttling: guessing keys at the console costs a minute every few tries.

Failures are counted per client address and per the guessed credential's prefix, each in a
sliding window; past `limit` failures in `window_s` on either, a sign-in is refused with the
seconds until the oldest failure leaves the window, before its key is even checked. The right
key from another address, with another prefix, still signs in. Counts are this replica's own:
a guesser spread over N replicas gets N times the tries, which still bounds it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

# The most addresses and prefixes remembered at once: a flood of distinct ones evicts the
# oldest instead of growing without bound.
MAX_TRACKED = 10_000


class SignInThrottle:
    def __init__(
        self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, sources: Iterable[str]) -> int | None:
        """Seconds to wait when any of these sources used up its failures; None: go on."""
        now = self._clock()
        waits = [self._wait(source, now) for source in sources]
        longest = max((wait for wait in waits if wait is not None), default=None)
        return None if longest is None else max(1, int(longest + 0.999))

    def failed(self, sources: Iterable[str]) -> None:
        now = self._clock()
        for source in sources:
            times = self._failures.pop(source, None) or deque()
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures[source] = times  # the newest at the end of the order
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def _wait(self, source: str, now: float) -> float | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) < self.limit:
            return None
        return self.window_s - (now - times[0])
