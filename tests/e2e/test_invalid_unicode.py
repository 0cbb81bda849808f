"""Text that no tokenizer or database can take is refused at the door, naming the field.

JSON can carry a lone UTF-16 surrogate as an escape (`"\\ud800"`) and so can raw UTF-8 bytes
that encode one; feedback and admin text is also stored, where NUL cannot go. Each reaches
every text field of every route here as a 400, never a 500, and the server keeps serving.
"""

from __future__ import annotations

import json

import httpx
import pytest

from ..conftest import ADMIN_HEADERS

BAD = "@BAD@"  # where the invalid text goes in a body
MESSAGES = [{"role": "user", "content": "hi"}]
PREFERENCE = {"adapter": "acme/support", "prompt": "p", "chosen": "yes", "rejected": "no"}
SCORE = {"adapter": "acme/support", "prompt": "p", "completion": "c", "score": 0.5, "judge": "j"}

# (route, body with BAD in one text field, the param the 400 must name)
TOKENIZED_FIELDS = [
    (
        "/v1/chat/completions",
        {"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": BAD}]},
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "demo",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": BAD}]}],
        },
        "messages.0.content.0.text",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "demo",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi", "name": BAD}],
        },
        "messages.0.name",
    ),
    ("/v1/chat/completions", {"model": BAD, "messages": MESSAGES}, "model"),
    ("/v1/chat/completions", {"model": "demo", "messages": MESSAGES, "stop": BAD}, "stop"),
    ("/v1/chat/completions", {"model": "demo", "messages": MESSAGES, "stop": ["x", BAD]}, "stop.1"),
    ("/v1/chat/completions", {"model": "demo", "messages": MESSAGES, "user": BAD}, "user"),
    ("/v1/completions", {"model": "demo", "max_tokens": 2, "prompt": BAD}, "prompt"),
    ("/v1/completions", {"model": "demo", "max_tokens": 2, "prompt": ["x", BAD]}, "prompt.1"),
    ("/v1/completions", {"model": "demo", "prompt": "x", "stop": [BAD]}, "stop.0"),
]
STORED_FIELDS = [
    ("/v1/feedback", {**PREFERENCE, "prompt": BAD}, "prompt"),
    ("/v1/feedback", {**PREFERENCE, "chosen": BAD}, "chosen"),
    ("/v1/feedback", {**PREFERENCE, "rejected": BAD}, "rejected"),
    (
        "/v1/feedback",
        {
            **{k: v for k, v in PREFERENCE.items() if k != "prompt"},
            "messages": [{"role": "user", "content": BAD}],
        },
        "messages.0.content",
    ),
    ("/v1/feedback", {**SCORE, "completion": BAD}, "completion"),
    ("/v1/feedback", {**SCORE, "judge": BAD}, "judge"),
    ("/v1/feedback", {**SCORE, "rationale": BAD}, "rationale"),
    ("/admin/v1/adapters", {"id": "acme/unicode", "description": BAD}, "description"),
    ("/admin/v1/adapters/acme/support/promote", {"version": 1, "reason": BAD}, "reason"),
    ("/admin/v1/adapters/acme/support/rollback", {"reason": BAD}, "reason"),
    ("/admin/v1/tenants/acme/keys", {"label": BAD}, "label"),
]
LONE_SURROGATE = "\\ud800"  # as a JSON escape
SURROGATE_BYTES = b"\xed\xa0\x80"  # the same code point, encoded as raw (invalid) UTF-8
NUL = "\\u0000"


def send(server, path: str, body: dict, bad: bytes) -> httpx.Response:
    raw = json.dumps(body).encode().replace(BAD.encode(), b"ok" + bad + b"ok")
    return httpx.post(
        f"{server.url}{path}",
        content=raw,
        timeout=60,
        headers={**ADMIN_HEADERS, "Content-Type": "application/json"},
    )


def assert_refused(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "bad", [LONE_SURROGATE.encode(), SURROGATE_BYTES], ids=["escape", "raw-bytes"]
)
@pytest.mark.parametrize(
    ("path", "body", "param"),
    TOKENIZED_FIELDS + STORED_FIELDS,
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_lone_surrogate_in_any_text_field_is_a_400_naming_it(vllm_server, path, body, param, bad):
    response = send(vllm_server, path, body, bad)
    assert_refused(response, param)
    assert "surrogate" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    STORED_FIELDS,
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_nul_in_stored_text_is_a_400_naming_it(vllm_server, path, body, param):
    response = send(vllm_server, path, body, NUL.encode())
    # Chat messages are shared with generation, where NUL is fine: feedback checks them as a
    # whole, and its message names the one at fault.
    assert_refused(response, "messages" if param.startswith("messages.") else param)
    assert "NUL" in response.json()["error"]["message"]


def test_a_batch_line_with_invalid_text_fails_alone(vllm_server):
    good = json.dumps({**PREFERENCE, "idempotency_key": "unicode-good"})
    bad = json.dumps({**PREFERENCE, "chosen": BAD}).replace(BAD, "x" + LONE_SURROGATE)
    response = httpx.post(
        f"{vllm_server.url}/v1/feedback/batch",
        content=f"{good}\n{bad}\n",
        headers=ADMIN_HEADERS,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["data"]
    assert first["status"] in (200, 201)
    assert (second["status"], second["error"]["param"]) == (400, "chosen")


def test_not_utf8_at_all_is_a_400(vllm_server):
    body = json.dumps({"model": "demo", "messages": MESSAGES}).encode().replace(b"hi", b"\xff")
    response = httpx.post(
        f"{vllm_server.url}/v1/chat/completions",
        content=body,
        headers={**ADMIN_HEADERS, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_still_serving_valid_unicode_after_all_that(vllm_server):
    body = {
        "model": "demo",
        "max_tokens": 2,
        "temperature": 0,
        "messages": [{"role": "user", "content": "héllo wörld 🙂 \u4e2d\u6587"}],
    }
    response = httpx.post(
        f"{vllm_server.url}/v1/chat/completions", json=body, headers=ADMIN_HEADERS, timeout=60
    )
    assert response.status_code == 200, response.text
