"""A client that goes away stops its generation in the engine."""

from __future__ import annotations

import httpx
import pytest

from ..conftest import ADMIN_HEADERS
from ..support import read_metric, wait_for_metric

ABORTED = "loraloop_engine_requests_aborted_total"
ACTIVE = "loraloop_engine_requests_active"
IN_PROGRESS = "loraloop_requests_in_progress"
# About five seconds of work for the engine on a small CPU, against a disconnect that the
# server notices within milliseconds: only an abort can end it early.
LONG = {
    "model": "globex/chat",
    "messages": [{"role": "user", "content": "a long story"}],
    "max_tokens": 1000,
    "temperature": 0,
    "n": 8,
}


@pytest.fixture(scope="module")
def long_request(client, tokenizer) -> dict:
    """LONG with the end of the turn ruled out (a -100 bias); precondition: undisturbed,
    every choice of it runs to max_tokens."""
    request = {
        **LONG,
        "logit_bias": {str(tokenizer.convert_tokens_to_ids(tokenizer.eos_token)): -100},
    }
    response = client.chat.completions.create(**request)
    assert {c.finish_reason for c in response.choices} == {"length"}
    return request


def test_stream_disconnect_aborts_every_choice(vllm_server, long_request):
    aborted_before = read_metric(vllm_server.url, ABORTED)
    with httpx.stream(
        "POST",
        f"{vllm_server.url}/v1/chat/completions",
        json={**long_request, "stream": True},
        headers=ADMIN_HEADERS,
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        for _ in range(8):  # a few chunks, then hang up
            next(lines)
    assert wait_for_metric(vllm_server.url, ACTIVE, 0, timeout_s=10) == 0
    assert read_metric(vllm_server.url, ABORTED) - aborted_before == LONG["n"]
    assert read_metric(vllm_server.url, IN_PROGRESS) == 0


def test_non_streaming_disconnect_aborts_every_choice(vllm_server, long_request):
    aborted_before = read_metric(vllm_server.url, ABORTED)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{vllm_server.url}/v1/chat/completions",
            json=long_request,
            headers=ADMIN_HEADERS,
            timeout=0.3,
        )
    assert wait_for_metric(vllm_server.url, ACTIVE, 0, timeout_s=10) == 0
    assert read_metric(vllm_server.url, ABORTED) - aborted_before == LONG["n"]
    assert read_metric(vllm_server.url, IN_PROGRESS) == 0
