"""The reference engine's incremental detokenizer and stop strings."""

from __future__ import annotations

import asyncio

import pytest

from loraloop.serve.engine.interface import OutputConstraint, SamplingSpec
from loraloop.serve.engine.reference import IncrementalText, ReferenceEngine
from loraloop.serve.errors import InvalidRequest


class CharTokenizer:
    """Token i is chr(i); 0xFFFD stands for half a character."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


def stream_text(text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    incremental, ids, deltas = IncrementalText(CharTokenizer(), stop), [], []
    for i, ch in enumerate(text):
        ids.append(ord(ch))
        delta, stopped = incremental.step(ids, final=i == len(text) - 1)
        deltas.append(delta)
        if stopped:
            return deltas, True
    return deltas, False


def test_incremental_text_holds_back_possible_stop_strings():
    deltas, stopped = stream_text("hello world", stop=("wor",))
    assert stopped and "".join(deltas) == "hello "
    assert all("w" not in d for d in deltas)


def test_incremental_text_without_stop_emits_everything():
    deltas, stopped = stream_text("hello", stop=())
    assert not stopped and deltas == list("hello")


def test_incremental_text_withholds_a_trailing_half_character():
    deltas, _ = stream_text("ab\ufffd", stop=())
    assert "".join(deltas) == "ab"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"constraint": OutputConstraint("json_object")}, "response_format"),
    ],
)
def test_sampling_the_reference_does_not_implement_is_refused_by_name(fields, param):
    engine = ReferenceEngine("unused", max_model_len=64)  # refused before the model is needed
    stream = engine.generate([1, 2], SamplingSpec(max_tokens=4, **fields), None, "r")
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(anext(stream))
    assert caught.value.param == param
