"""Merging the streams of a request's choices."""

from __future__ import annotations

import asyncio

import pytest

from loraloop.serve.streams import merge_indexed


def test_merge_indexed_interleaves_and_tags():
    async def numbers(prefix: str, count: int):
        for i in range(count):
            await asyncio.sleep(0)
            yield f"{prefix}{i}"

    async def run():
        return [item async for item in merge_indexed([numbers("a", 3), numbers("b", 2)])]

    merged = asyncio.run(run())
    assert sorted(merged) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [v for i, v in merged if i == 0] == ["a0", "a1", "a2"]


def test_merge_indexed_closes_every_stream_when_left_early():
    closed = []

    async def endless(name: str):
        try:
            while True:
                await asyncio.sleep(0)
                yield name
        finally:
            closed.append(name)

    async def run():
        merged = merge_indexed([endless("x"), endless("y")])
        await anext(merged)
        await merged.aclose()

    asyncio.run(run())
    assert sorted(closed) == ["x", "y"]


def test_merge_indexed_raises_a_stream_error():
    async def failing():
        yield 1
        raise RuntimeError("engine fell over")

    async def ok():
        yield 2

    async def run():
        return [item async for item in merge_indexed([failing(), ok()])]

    with pytest.raises(RuntimeError, match="engine fell over"):
        asyncio.run(run())
