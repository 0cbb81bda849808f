"""New grammars compiled in a worker process, within a time limit, before the engine gets
them: the real backend (xgrammar) and the demo model's tokenizer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from loraloop.serve.engine.interface import OutputConstraint
from loraloop.serve.errors import InvalidRequest
from loraloop.serve.openai.grammar_gate import GrammarGate

SMALL = OutputConstraint(
    "json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
)
# 1,000 optional properties: about 6 s to compile on one core.
SLOW = OutputConstraint(
    "json_schema",
    json.dumps(
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}
    ),
    param="tools",
)


@contextmanager
def opened(tokenizer, timeout_s: float) -> Iterator[GrammarGate]:
    gate = GrammarGate(tokenizer, timeout_s=timeout_s)
    try:
        yield gate
    finally:
        gate.stop()


def test_grammars_compile_once_and_slow_ones_are_refused_in_time(tokenizer):
    async def scenario():
        with opened(tokenizer, 0.5) as gate:
            await gate.check(SMALL, "acme")
            worker = gate._worker
            await gate.check(SMALL, "globex")  # remembered: no second compile
            assert gate._worker is worker
            started = time.perf_counter()
            with pytest.raises(InvalidRequest) as caught:
                await gate.check(SLOW, "acme")
            assert time.perf_counter() - started < 3
            assert caught.value.param == "tools" and "within 0.5 s" in caught.value.message
            with pytest.raises(InvalidRequest):  # refused at once the next time
                await asyncio.wait_for(gate.check(SLOW, "acme"), 0.1)
            await gate.check(SMALL, "acme")  # a fresh worker serves what follows

    asyncio.run(scenario())


def test_a_grammar_the_backend_refuses_is_a_400_without_its_internals(tokenizer):
    async def scenario():
        with opened(tokenizer, 30) as gate:
            with pytest.raises(InvalidRequest) as caught:
                await gate.check(
                    OutputConstraint(
                        "json_schema", json.dumps({"type": "string", "pattern": "^(a)\\1$"})
                    ),
                    None,
                )
            assert caught.value.param == "response_format"
            assert "Backreference" in caught.value.message
            assert ".cc" not in caught.value.message and "/project" not in caught.value.message

    asyncio.run(scenario())


def test_a_request_that_ends_first_stops_its_compile(tokenizer):
    async def scenario():
        with opened(tokenizer, 60) as gate:
            await gate.check(SMALL, None)
            worker = gate._worker
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(gate.check(SLOW, "acme"), 0.5)
            assert gate._worker is None and not worker.is_alive()

    asyncio.run(scenario())
