"""This server's share of each rollout's guard counts (adapters/rollouts/counts.py names
them): counted in memory per request, added to the registry every few seconds, where every
server's counts add up.

Counts that could not be written (the registry is away) are kept and go with the next
write, as usage counts are (serve/usage.py): an outage delays the evidence without losing
it, unless the process ends meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.rollouts.book import CountKey, RolloutBook, RolloutRecord

from ..flushing import flush_every

FLUSH_S = 5.0
logger = logging.getLogger(__name__)


class RolloutCountRecorder:
    def __init__(self, book: RolloutBook, *, flush_s: float = FLUSH_S) -> None:
        self.book, self.flush_s = book, flush_s
        self._counts: Counter[CountKey] = Counter()

    def add(self, rollout: RolloutRecord, version: int, name: str) -> None:
        """One more of `name` for `version` in the rollout's current step."""
        self._counts[(rollout.id, rollout.step, version, name)] += 1

    async def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            await asyncio.to_thread(self.book.add_counts, counts)
        except RegistryUnavailable:  # said once by the registry watcher; retried quietly
            self._counts.update(counts)
        except Exception:
            logger.exception("rollout counts could not be written; kept for the next try")
            self._counts.update(counts)

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled, then once more."""
        await flush_every(self.flush_s, self.flush)
