"""Shadow pairs on their way to the registry: collected in memory and written in one
transaction about every second, so a busy adapter costs one insert per second, not one per
request.

While the registry is away, pairs are kept for the next write, but only the newest
`max_kept`: they are a sample for a judge, and memory must stay bounded whatever the
outage's length.

The same writer has the registry drop, every `forget_s`, the users' texts that may be kept
no longer (past `retention_s`, or judged where the adapter's policy does not keep users'
text; see adapters/rollouts/shadow_texts.py). Every replica asks; the work is done once.
"""

from __future__ import annotations

import asyncio
import logging

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.rollouts.book import RolloutBook, ShadowPair

from ..flushing import flush_every

FLUSH_S = 1.0
MAX_KEPT = 1000
FORGET_S = 60.0
RETENTION_S = 7 * 24 * 3600.0
logger = logging.getLogger(__name__)


class ShadowPairWriter:
    def __init__(
        self,
        book: RolloutBook,
        *,
        flush_s: float = FLUSH_S,
        max_kept: int = MAX_KEPT,
        retention_s: float = RETENTION_S,
        forget_s: float = FORGET_S,
    ) -> None:
        self.book, self.flush_s, self.max_kept = book, flush_s, max_kept
        self.retention_s, self.forget_s = retention_s, forget_s
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
            logger.warning(
                "the registry is away: keeping only the newest %d shadow pairs", self.max_kept
            )
        self._pairs = kept[-self.max_kept :]

    async def forget(self) -> None:
        try:
            forgotten = await asyncio.to_thread(self.book.forget_texts, self.retention_s)
        except RegistryUnavailable:  # asked again at the next round
            return
        except Exception:
            logger.exception("the texts of shadow comparisons could not be dropped")
            return
        if forgotten:
            logger.info("dropped the texts of %d shadow comparisons", forgotten)

    async def _forget_every(self) -> None:
        while True:  # from the start: a server that restarts often still forgets
            await self.forget()
            await asyncio.sleep(self.forget_s)

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled, then once more; forget meanwhile."""
        await asyncio.gather(flush_every(self.flush_s, self.flush), self._forget_every())
