"""What the server counts in memory and writes to the registry now and then (usage, rollout
counts, shadow pairs) is written on a timer, and once more as the server stops, so that
what was counted last is not lost with the process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def flush_every(seconds: float, flush: Callable[[], Awaitable[None]]) -> None:
    """Call `flush` every `seconds` until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(seconds)
            await flush()
    finally:
        await flush()
