"""Mixed batches: concurrent requests for different adapters never cross adapters."""

from __future__ import annotations

import asyncio

from ..conftest import ADAPTER_SEEDS, async_client

MAX_TOKENS = 32


async def _ask(client, adapter: str, question: str) -> str:
    response = await client.chat.completions.create(
        model=adapter,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    return response.choices[0].message.content


def test_sixteen_concurrent_requests_over_eight_adapters_match_solo_answers(vllm_server):
    jobs = [
        (adapter, f"question {i}: what is the price of order {i}")
        for i, adapter in enumerate(list(ADAPTER_SEEDS) * 2)
    ]

    async def run() -> tuple[list[str], list[str]]:
        async with async_client(vllm_server) as client:
            solo = [await _ask(client, adapter, q) for adapter, q in jobs]
            together = await asyncio.gather(*(_ask(client, a, q) for a, q in jobs))
        return solo, list(together)

    solo, together = asyncio.run(run())
    assert len(set(solo)) == len(jobs)  # the comparison below can tell mix-ups apart
    assert together == solo
