"""The feedback API on the session server: storage, idempotency, validation, isolation."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from loraloop.serve.cli.client import AdminClient

from ..conftest import ADMIN_KEY

MESSAGES = [{"role": "user", "content": "where is my parcel"}]
PREFERENCE = {
    "adapter": "acme/support",
    "messages": MESSAGES,
    "chosen": "It ships today.",
    "rejected": "No idea.",
}


def tenant_headers(server, tenant: str, **extra) -> dict:
    return {"Authorization": f"Bearer {server.tenant_keys[tenant]}", **extra}


def post(server, body, tenant: str = "acme", path: str = "/v1/feedback", **headers):
    return httpx.post(
        f"{server.url}{path}",
        json=body,
        timeout=30,
        headers=tenant_headers(server, tenant, **headers),
    )


def stats(server, adapter: str, tenant: str = "acme") -> httpx.Response:
    return httpx.get(
        f"{server.url}/v1/feedback/stats",
        params={"adapter": adapter},
        headers=tenant_headers(server, tenant),
        timeout=30,
    )


def test_preference_is_stored_before_it_is_acknowledged(vllm_server):
    before = stats(vllm_server, "acme/support").json()
    response = post(vllm_server, {**PREFERENCE, "adapter": "acme/support@1"})
    assert response.status_code == 201
    created = response.json()
    assert (created["adapter"], created["version"], created["kind"], created["status"]) == (
        "acme/support",
        1,
        "preference",
        "pending",
    )
    after = stats(vllm_server, "acme/support").json()
    assert after["total"] == before["total"] + 1
    assert after["by_version"].get("1", 0) == before["by_version"].get("1", 0) + 1


def test_a_retry_with_the_same_key_stores_nothing_new(vllm_server):
    key = uuid.uuid4().hex
    first = post(vllm_server, PREFERENCE, **{"Idempotency-Key": key})
    total = stats(vllm_server, "acme/support").json()["total"]
    again = post(vllm_server, PREFERENCE, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert (first.headers["Idempotent-Replayed"], again.headers["Idempotent-Replayed"]) == (
        "false",
        "true",
    )
    assert stats(vllm_server, "acme/support").json()["total"] == total
    other_body = post(
        vllm_server, {**PREFERENCE, "chosen": "Tomorrow."}, **{"Idempotency-Key": key}
    )
    assert other_body.status_code == 409
    assert other_body.json()["error"]["code"] == "conflict"


BAD = {
    "no rejected": ({**PREFERENCE, "rejected": None}, "needs both chosen and rejected"),
    "same texts": ({**PREFERENCE, "rejected": PREFERENCE["chosen"]}, "the same text"),
    "prompt and messages": ({**PREFERENCE, "prompt": "hi"}, "not both"),
    "no prompt": ({k: v for k, v in PREFERENCE.items() if k != "messages"}, "not both"),
    "score above 1": (
        {
            "adapter": "acme/support",
            "prompt": "hi",
            "completion": "yo",
            "score": 1.5,
            "judge": "gpt",
        },
        "score",
    ),
    "score without judge": (
        {"adapter": "acme/support", "prompt": "hi", "completion": "yo", "score": 0.5},
        "needs judge",
    ),
    "score without completion": (
        {"adapter": "acme/support", "prompt": "hi", "score": 0.5, "judge": "j"},
        "needs completion_id, or completion",
    ),
    "text too long": ({**PREFERENCE, "chosen": "x" * 32_001}, "chosen"),
    "unknown field": ({**PREFERENCE, "weight": 2}, "weight"),
    "wrong type": ({**PREFERENCE, "chosen": 7}, "chosen"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_feedback_is_refused_clearly(vllm_server, case):
    body, phrase = BAD[case]
    total = stats(vllm_server, "acme/support").json()["total"]
    response = post(vllm_server, {k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400
    error = response.json()["error"]
    assert phrase in error["message"], error
    assert stats(vllm_server, "acme/support").json()["total"] == total


@pytest.mark.parametrize("adapter", ["globex/chat", "globex/chat@1", "globex/missing"])
def test_feedback_on_another_tenants_adapter_looks_missing(vllm_server, adapter):
    response = post(vllm_server, {**PREFERENCE, "adapter": adapter})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert stats(vllm_server, adapter).status_code == 404


def test_batch_reports_each_line(vllm_server):
    lines = [
        json.dumps(PREFERENCE),
        json.dumps({**PREFERENCE, "adapter": "globex/chat"}),
        "{not json",
        json.dumps({**PREFERENCE, "chosen": None}),
        json.dumps(
            {
                "adapter": "acme/support",
                "prompt": "hi",
                "completion": "hello",
                "score": 0.9,
                "judge": "rubric-v1",
                "idempotency_key": "b-1",
            }
        ),
        json.dumps(
            {
                "adapter": "acme/support",
                "prompt": "hi",
                "completion": "hello",
                "score": 0.9,
                "judge": "rubric-v1",
                "idempotency_key": "b-1",
            }
        ),
    ]
    response = httpx.post(
        f"{vllm_server.url}/v1/feedback/batch",
        content="\n".join(lines),
        headers=tenant_headers(vllm_server, "acme"),
        timeout=30,
    )
    assert response.status_code == 200
    result = response.json()
    assert [r["status"] for r in result["data"]] == [201, 404, 400, 400, 201, 200]
    assert (result["created"], result["failed"]) == (3, 3)
    assert result["data"][5]["feedback"]["id"] == result["data"][4]["feedback"]["id"]


def test_scores_can_name_a_recorded_completion(vllm_server):
    with AdminClient(vllm_server.url, ADMIN_KEY) as admin:
        admin._call("PUT", "/adapters/initech/memo/policy", json={"record_completions": True})
    initech = openai.OpenAI(
        base_url=f"{vllm_server.url}/v1", max_retries=0, api_key=vllm_server.tenant_keys["initech"]
    )
    answer = initech.chat.completions.create(
        model="initech/memo", messages=MESSAGES, max_tokens=4, n=2
    )
    for choice in (0, 1):
        response = post(
            vllm_server,
            {
                "completion_id": answer.id,
                "choice": choice,
                "score": 0.25 * (choice + 1),
                "judge": "human",
            },
            tenant="initech",
        )
        assert response.status_code == 201, response.text
        assert response.json()["version"] == 1
    assert stats(vllm_server, "initech/memo", tenant="initech").json()["by_kind"] == {"score": 2}
    # Another tenant cannot score it, and completions of unrecorded adapters are unknown.
    foreign = post(vllm_server, {"completion_id": answer.id, "score": 1, "judge": "x"})
    assert foreign.status_code == 404
    unrecorded = initech.chat.completions.create(
        model="initech/tps", messages=MESSAGES, max_tokens=2
    )
    missing = post(
        vllm_server, {"completion_id": unrecorded.id, "score": 1, "judge": "x"}, tenant="initech"
    )
    assert missing.status_code == 404


def test_a_batch_that_is_not_text_is_refused(vllm_server):
    response = httpx.post(
        f"{vllm_server.url}/v1/feedback/batch",
        content=b"\xff\xfe{}",
        headers=tenant_headers(vllm_server, "acme"),
        timeout=30,
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["error"]["message"]
