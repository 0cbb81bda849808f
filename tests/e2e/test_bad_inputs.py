"""Every bad input gets a 4xx in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from loraloop.serve.cli.client import AdminClient
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import ADMIN_HEADERS, ADMIN_KEY

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def post(server, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}", headers={**ADMIN_HEADERS, **(headers or {})}, timeout=30, **kwargs
    )


def chat(**fields) -> dict:
    return {"model": "acme/support", "messages": OK_MESSAGES, "max_tokens": 4, **fields}


CASES = {
    # name: (body, status, param)
    "unknown model": (chat(model="acme/unknown"), 404, "model"),
    "foreign-looking path": (chat(model="../../etc/passwd"), 404, "model"),
    "unknown pinned version": (chat(model="acme/support@9"), 404, "model"),
    "max_tokens over the bound": (chat(max_tokens=100_000), 400, "max_tokens"),
    "max_completion_tokens over the bound": (
        chat(max_completion_tokens=100_000),
        400,
        "max_completion_tokens",
    ),
    "max_tokens zero": (chat(max_tokens=0), 400, "max_tokens"),
    "negative temperature": (chat(temperature=-0.5), 400, "temperature"),
    "top_p zero": (chat(top_p=0), 400, "top_p"),
    "n over the bound": (chat(n=1000), 400, "n"),
    "empty messages": (chat(messages=[]), 400, "messages"),
    "messages not a list": (chat(messages="hi"), 400, "messages"),
    "unknown role": (chat(messages=[{"role": "robot", "content": "hi"}]), 400, "messages.0.role"),
    "image content": (
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ]
        ),
        400,
        None,
    ),
    "max_tokens as a string": (chat(max_tokens="ten"), 400, "max_tokens"),
    "stream as a string": (chat(stream="yes"), 400, "stream"),
    "too many stop sequences": (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    "empty stop sequence": (chat(stop=[""]), 400, "stop"),
    "top_logprobs over the bound": (chat(logprobs=True, top_logprobs=50), 400, "top_logprobs"),
    "unsupported parameter": (chat(functions=[{"name": "f"}]), 400, "functions"),
    "tool without its function": (chat(tools=[{"type": "function"}]), 400, "tools.0.function"),
    "negative seed": (chat(seed=-1), 400, "seed"),
    "prompt longer than the context": (
        chat(messages=[{"role": "user", "content": "word " * 3000}]),
        400,
        "messages",
    ),
    "max_tokens beyond the context": (
        chat(messages=[{"role": "user", "content": "word " * 700}], max_tokens=500),
        400,
        "max_tokens",
    ),
    "max_completion_tokens beyond the context": (
        chat(messages=[{"role": "user", "content": "word " * 700}], max_completion_tokens=500),
        400,
        "max_completion_tokens",
    ),
}

COMPLETION_CASES = {
    "empty prompt list": ({"prompt": []}, 400, "prompt"),
    "token id outside the vocabulary": ({"prompt": [1, 2, 10**9]}, 400, "prompt"),
    "empty token list": ({"prompt": [[]]}, 400, "prompt"),
    "too many prompts": ({"prompt": ["x"] * 100}, 400, "prompt"),
    "logprobs over the bound": ({"prompt": "x", "logprobs": 100}, 400, "logprobs"),
    "missing prompt": ({}, 400, "prompt"),
}


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("case", CASES)
def test_chat_bad_input(vllm_server, case):
    body, status, param = CASES[case]
    response = post(vllm_server, "/v1/chat/completions", json=body)
    assert_openai_error(response, status, param)


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_completion_bad_input(vllm_server, case):
    fields, status, param = COMPLETION_CASES[case]
    body = {"model": "acme/support", "max_tokens": 4, **fields}
    response = post(vllm_server, "/v1/completions", json=body)
    assert_openai_error(response, status, param)


def test_context_overflow_has_its_own_code(vllm_server):
    body, _, _ = CASES["prompt longer than the context"]
    response = post(vllm_server, "/v1/chat/completions", json=body)
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'{"model": "acme/support"'])
def test_malformed_json(vllm_server, raw):
    response = post(
        vllm_server,
        "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400, None)


def test_unknown_route_is_an_openai_error(vllm_server):
    response = httpx.get(f"{vllm_server.url}/v1/nothing-here", headers=ADMIN_HEADERS)
    assert_openai_error(response, 404, None)


def test_damaged_version_fails_only_its_own_requests(vllm_server, client, demo_model, tmp_path):
    """Weights damaged on disk after registration: the load fails cleanly in the engine, that
    version's requests get 500 adapter_load_failed, every other adapter keeps serving."""
    adapter = build_random_adapter(demo_model, tmp_path / "fragile", seed=99)
    with AdminClient(vllm_server.url, ADMIN_KEY) as admin:
        admin.create_adapter("acme/fragile")
        version, _ = admin.register("acme/fragile", adapter)
    digest = version["content_hash"]
    stored = vllm_server.data_dir / "weights" / "sha256" / digest[:2] / digest
    weights = stored / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    response = post(vllm_server, "/v1/chat/completions", json=chat(model="acme/fragile@1"))
    error = assert_openai_error(response, 500, None)
    assert error["code"] == "adapter_load_failed"
    healthy = client.chat.completions.create(
        model="acme/support", messages=OK_MESSAGES, max_tokens=4
    )
    assert healthy.choices[0].finish_reason in ("stop", "length")


def test_server_healthy_after_bad_inputs(vllm_server, client):
    for case in CASES.values():
        post(vllm_server, "/v1/chat/completions", json=case[0])
    assert httpx.get(f"{vllm_server.url}/health").status_code == 200
    assert httpx.get(f"{vllm_server.url}/ready").status_code == 200
    answer = client.chat.completions.create(
        model="acme/support", messages=OK_MESSAGES, max_tokens=4
    )
    assert answer.usage.completion_tokens >= 1
