"""Async-iterator plumbing for fan-out generation: merging choices, holding resources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def merge_indexed(
    streams: list[AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[int, T], None]:
    """Items of all streams as they come, tagged with their stream's index.

    Leaving early (client gone, error) cancels every pump, which closes each stream and so
    aborts its request in the engine.
    """
    if len(streams) == 1:  # the common case needs no tasks
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        async with aclosing(stream):
            try:
                async for item in stream:
                    await queue.put((index, item))
            except Exception as exc:
                await queue.put((index, exc))
        await queue.put((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def releasing(
    stream: AsyncGenerator[T, None],
    release: Callable[[], None],
) -> AsyncGenerator[T, None]:
    """`stream`, calling `release` once it ends however it ends."""
    try:
        async with aclosing(stream):
            async for item in stream:
                yield item
    finally:
        release()


async def prepend(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    yield first
    async with aclosing(rest):
        async for item in rest:
            yield item
