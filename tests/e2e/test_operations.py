"""What an operator watches and relies on: metrics after a known workload, body caps."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraloop.serve.metrics import adapter_label

from ..conftest import ADMIN_HEADERS

CHAT = "/v1/chat/completions"


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_a_scripted_workload(vllm_server, client):
    before = samples(vllm_server.url)
    generated = 0
    for _ in range(3):
        reply = client.chat.completions.create(
            model="acme/legal", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        generated += reply.usage.completion_tokens
    missing = httpx.post(
        f"{vllm_server.url}{CHAT}",
        headers=ADMIN_HEADERS,
        timeout=30,
        json={"model": "acme/nope", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert missing.status_code == 404
    after = samples(vllm_server.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    legal = adapter_label("acme/legal")  # the server shows no adapter ids by default
    served = dict(endpoint=CHAT, adapter=legal, version="1", status="200")
    assert delta("loraloop_requests_total", **served) == 3
    assert (
        delta("loraloop_requests_total", endpoint=CHAT, adapter="-", version="-", status="404") == 1
    )
    assert delta("loraloop_generation_tokens_total", adapter=legal) == generated
    assert delta("loraloop_prompt_tokens_total", adapter=legal) > 0
    assert delta("loraloop_time_to_first_token_seconds_count", endpoint=CHAT) == 3
    assert delta("loraloop_request_duration_seconds_count", endpoint=CHAT) == 4
    assert value(after, "loraloop_adapter_live_version", adapter=legal) == 1
    assert value(after, "loraloop_registry_events_total", kind="promote") >= 8
    assert value(after, "loraloop_adapter_cache_lookups_total", result="hit") >= 2


def test_oversized_bodies_are_refused_before_they_are_read(vllm_server):
    too_big = b"x" * ((16 << 20) + 1)
    declared = httpx.post(
        f"{vllm_server.url}{CHAT}",
        content=too_big,
        timeout=60,
        headers={**ADMIN_HEADERS, "content-type": "application/json"},
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for _ in range(17):
            yield b"x" * (1 << 20)

    chunked = httpx.post(
        f"{vllm_server.url}{CHAT}",
        content=chunks(),
        timeout=60,
        headers={**ADMIN_HEADERS, "content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert httpx.get(f"{vllm_server.url}/health").status_code == 200
