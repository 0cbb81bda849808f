"""This server's share of each adapter version's usage: counted in memory per request, added
to the registry every few seconds (adapters/usage.py sums what every server adds).

A request costs one dict update. Counts that could not be written (the registry is away) are
kept and go with the next write, so an outage delays the figures without losing them, unless
the process ends meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.schema import utcnow
from loraloop.adapters.usage import UsageBook, UsageCount, UsageKey, hour_of

from .flushing import flush_every

FLUSH_S = 5.0
logger = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, book: UsageBook, clock: Callable[[], datetime] = utcnow) -> None:
        self.book, self._clock = book, clock
        self._counts: defaultdict[UsageKey, UsageCount] = defaultdict(UsageCount)

    def record(
        self, adapter_id: str, version: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        key = UsageKey(adapter_id, version, hour_of(self._clock()))
        self._counts[key].add(UsageCount(1, prompt_tokens, completion_tokens))

    async def flush(self) -> None:
        counts, self._counts = self._counts, defaultdict(UsageCount)
        if not counts:
            return
        try:
            await asyncio.to_thread(self.book.add, counts)
        except RegistryUnavailable:  # said once by the registry watcher; retried quietly
            self._keep(counts)
        except Exception:
            logger.exception("usage counts could not be written; kept for the next try")
            self._keep(counts)

    def _keep(self, counts: dict[UsageKey, UsageCount]) -> None:
        for key, count in counts.items():
            self._counts[key].add(count)

    async def run(self) -> None:
        """Flush every FLUSH_S until cancelled, then once more."""
        await flush_every(FLUSH_S, self.flush)
