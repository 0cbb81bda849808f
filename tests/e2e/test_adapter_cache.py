"""More adapter versions than the vLLM server's host cache holds: versions are evicted and
read back from their files with the same answers, and rejected ones are unloaded."""

from __future__ import annotations

import httpx

from loraloop.serve.cli.client import AdminClient
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import ADMIN_HEADERS, ADMIN_KEY, LORA_CACHE_ARGS

HOST_CACHE = int(LORA_CACHE_ARGS[LORA_CACHE_ARGS.index("--max-cpu-loras") + 1])


def greedy(server, model: str) -> str:
    body = {"model": model, "prompt": "the weather today", "max_tokens": 8, "temperature": 0}
    response = httpx.post(
        f"{server.url}/v1/completions", json=body, headers=ADMIN_HEADERS, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_more_versions_than_the_host_cache_keep_their_own_answers(
    vllm_server, demo_model, tmp_path
):
    count = HOST_CACHE + 3
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="warmup-test") as admin:
        admin.create_adapter("acme/many")
        for seed in range(count):
            directory = build_random_adapter(demo_model, tmp_path / f"v{seed}", seed=100 + seed)
            admin.register("acme/many", directory)
        models = [f"acme/many@{n}" for n in range(1, count + 1)]
        first = {model: greedy(vllm_server, model) for model in models}
        assert len(set(first.values())) > 1  # the versions really differ
        # Round-robin again: each was evicted from the host cache and read back from disk.
        assert {model: greedy(vllm_server, model) for model in models} == first
        for n in (1, 2):
            admin.reject("acme/many", n, reason="unloaded")
        for model in models[:2]:
            body = {"model": model, "prompt": "x", "max_tokens": 2}
            response = httpx.post(
                f"{vllm_server.url}/v1/completions", json=body, headers=ADMIN_HEADERS, timeout=60
            )
            assert response.status_code == 404
        assert {model: greedy(vllm_server, model) for model in models[2:]} == {
            model: first[model] for model in models[2:]
        }
