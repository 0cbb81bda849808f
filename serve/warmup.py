"""Adapter versions are loaded into the engine once, before any request is routed to them.

vLLM dies for every tenant if a bad adapter reaches generate(), but add_lora fails cleanly:
so every version passes through `ensure_loaded` first, and one whose load failed keeps
failing fast for its own requests only. Version files are immutable, so neither outcome can
change later for the same LoRA id.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from .engine.protocol import AdapterRef, Engine
from .errors import AdapterUnavailable
from .metrics import ServeMetrics

logger = logging.getLogger(__name__)


class AdapterWarmer:
    def __init__(self, engine: Engine, metrics: ServeMetrics) -> None:
        self._engine, self._metrics = engine, metrics
        self._loaded: set[int] = set()
        self._failed: dict[int, AdapterUnavailable] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def ensure_loaded(self, adapter: AdapterRef) -> None:
        key = adapter.lora_int_id
        if key in self._loaded:
            self._metrics.cache_lookups.labels("hit").inc()
            return
        self._metrics.cache_lookups.labels("miss").inc()
        # One load per version however many requests arrive for it at once.
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._failed:
                raise self._failed[key]
            if key not in self._loaded:
                await self._load(adapter)

    async def _load(self, adapter: AdapterRef) -> None:
        started = perf_counter()
        try:
            await self._engine.add_adapter(adapter)
        except AdapterUnavailable as exc:
            self._failed[adapter.lora_int_id] = exc
            self._metrics.adapter_loads.labels("failed").inc()
            raise
        self._metrics.adapter_loads.labels("loaded").inc()
        self._metrics.adapter_load_seconds.observe(perf_counter() - started)
        self._loaded.add(adapter.lora_int_id)
        logger.info("adapter %s loaded (lora id %d)", adapter.served_name, adapter.lora_int_id)

    async def warm(self, adapters: list[AdapterRef]) -> None:
        """Load adapters ahead of traffic; a broken one is logged and fails only its requests."""
        for adapter in adapters:
            try:
                await self.ensure_loaded(adapter)
            except AdapterUnavailable:
                logger.error("adapter %s is unavailable; its requests will fail",
                             adapter.served_name)
