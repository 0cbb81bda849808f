"""Shadow pairs on their way to the registry: collected in memory and written in one
transaction about every second, so a busy adapter costs one insert per second, not one per
request.

While the registry is away, pairs are kept for the next write, but only the newest
`max_kept`: they are a sample for a judge, and memory must stay bounded whatever the
outage's length.
"""

from __future__ import annotations

import asyncio
import logging

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.rollouts import RolloutBook, ShadowPair

from .flushing import flush_every

FLUSH_S = 1.0
MAX_KEPT = 1000
logger = logging.getLogger(__name__)


class ShadowPairWriter:
    def __init__(self, book: RolloutBook, *, flush_s: float = FLUSH_S,
                 max_kept: int = MAX_KEPT) -> None:
        self.book, self.flush_s, self.max_kept = book, flush_s, max_kept
        self._pairs: list[ShadowPair] = []
        self._overflowed = False  # pairs were dropped during this outage (said once)

    def add(self, pair: ShadowPair) -> None:
        self._pairs.append(pair)

    async def flush(self) -> None:
        pairs, self._pairs = self._pairs, []
        if not pairs:
            return
        try:
            await asyncio.to_thread(self.book.add_pairs, pairs)
            self._overflowed = False
        except RegistryUnavailable:  # said once by the registry watcher; retried quietly
            self._keep(pairs)
        except Exception:  # anything else would fail again: a retry could only repeat it
            logger.exception("%d shadow pairs could not be written; dropped", len(pairs))

    def _keep(self, pairs: list[ShadowPair]) -> None:
        kept = pairs + self._pairs
        if len(kept) > self.max_kept and not self._overflowed:
            self._overflowed = True
            logger.warning("the registry is away: keeping only the newest %d shadow pairs",
                           self.max_kept)
        self._pairs = kept[-self.max_kept:]

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled, then once more."""
        await flush_every(self.flush_s, self.flush)
