"""Adapter versions are loaded into the engine once, before any request is routed to them.

vLLM dies for every tenant if a bad adapter reaches generate(), but add_lora fails cleanly:
so every version passes through `ensure_loaded` first, and one whose load failed keeps
failing fast for its own requests only. A failure is retried after `retry_failed_s`, since
a load can also fail for passing reasons (memory, a storage hiccup); retrying is safe
because add_lora fails cleanly. What the warmer remembers is bounded by the versions a
request can still reach: `keep_only` forgets the rest and unloads them from the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from time import perf_counter

from .engine.interface import AdapterRef, Engine
from .errors import AdapterUnavailable
from .metrics import ServeMetrics

logger = logging.getLogger(__name__)
RETRY_FAILED_LOAD_S = 30.0


class AdapterWarmer:
    def __init__(
        self,
        engine: Engine,
        metrics: ServeMetrics,
        *,
        retry_failed_s: float = RETRY_FAILED_LOAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._metrics = engine, metrics
        self._retry_failed_s, self._clock = retry_failed_s, clock
        self._loaded: dict[int, AdapterRef] = {}  # by engine LoRA id
        self._failed: dict[int, tuple[AdapterUnavailable, float]] = {}  # error, when
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def remembered(self) -> int:
        """Versions the warmer holds any state for (loaded, failed or being loaded)."""
        return len(self._loaded.keys() | self._failed.keys() | self._locks.keys())

    async def ensure_loaded(self, adapter: AdapterRef) -> None:
        key = adapter.lora_int_id
        if key in self._loaded:
            self._metrics.cache_lookups.labels("hit").inc()
            return
        self._metrics.cache_lookups.labels("miss").inc()
        # One load per version however many requests arrive for it at once.
        async with self._locks.setdefault(key, asyncio.Lock()):
            self._raise_recent_failure(key)
            if key not in self._loaded:
                await self._load(adapter)

    def _raise_recent_failure(self, key: int) -> None:
        failure = self._failed.get(key)
        if failure is not None and self._clock() - failure[1] < self._retry_failed_s:
            raise failure[0]

    async def _load(self, adapter: AdapterRef) -> None:
        started = perf_counter()
        try:
            await self._engine.add_adapter(adapter)
        except AdapterUnavailable as exc:
            self._failed[adapter.lora_int_id] = (exc, self._clock())
            self._metrics.adapter_loads.labels("failed").inc()
            raise
        self._failed.pop(adapter.lora_int_id, None)
        self._metrics.adapter_loads.labels("loaded").inc()
        self._metrics.adapter_load_seconds.observe(perf_counter() - started)
        self._loaded[adapter.lora_int_id] = adapter
        logger.info("adapter %s loaded (lora id %d)", adapter.served_name, adapter.lora_int_id)

    async def warm(self, adapters: list[AdapterRef]) -> None:
        """Load adapters ahead of traffic; a broken one is logged and fails only its requests."""
        for adapter in adapters:
            try:
                await self.ensure_loaded(adapter)
            except AdapterUnavailable:
                logger.error(
                    "adapter %s is unavailable; its requests will fail", adapter.served_name
                )

    async def keep_only(self, servable: Iterable[AdapterRef]) -> None:
        """Forget every version outside `servable` (rejected, or gone from the registry) and
        unload it from the engine: no new request can reach it any more."""
        keep = {adapter.lora_int_id for adapter in servable}
        for key in [key for key in self._loaded if key not in keep]:
            adapter = self._loaded.pop(key)
            try:
                await self._engine.remove_adapter(adapter)
            except Exception:  # the engine may have evicted it already; nothing to free
                logger.warning("unloading adapter %s failed", adapter.served_name, exc_info=True)
        for remembered in (self._failed, self._locks):
            for key in [key for key in remembered if key not in keep]:
                del remembered[key]
