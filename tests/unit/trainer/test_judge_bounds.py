"""Judges hold their bounds against hostile endpoints, patterns and functions: an LLM judge's
call ends by its deadline and reads a bounded reply, its key comes only from a variable the
operator allows, schema patterns search under the rules judge's time limit, and a Python
judge's malformed result is an abstention with its cause.

The endpoints are real HTTP listeners on loopback, each in a thread of the test.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.judges import JudgeUnavailable, judge_for

PROMPT = StoredPrompt.chat([("user", "where is my order?")])
VERDICT = json.dumps({"choices": [{"message": {"content": '{"winner": "A", "reason": "ok"}'}}]})


class Listener(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, handler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.authorizations: list[str | None] = []
        self.sent = 0  # body bytes written to clients
        self.stop = threading.Event()


@contextmanager
def listening(reply) -> Iterator[tuple[str, Listener]]:
    """A loopback endpoint that records each POST's Authorization header, then answers it
    with `reply(handler)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.server.authorizations.append(self.headers.get("Authorization"))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                reply(self)  # ends early when the judge hangs up: what these tests want

        def log_message(self, *_) -> None:
            pass

    server = Listener(Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def answer_verdict(handler) -> None:
    body = VERDICT.encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def drip(handler) -> None:
    """The whole response, status line included, one byte every 0.5 s (30 s in all)."""
    response = (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b" " * 100)[:60]
    for byte in response:
        if handler.server.stop.wait(0.5):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


def flood(handler) -> None:
    """A reply announced as 300 MB, written until the reader hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(300 << 20))
    handler.end_headers()
    chunk = b"x" * (64 << 10)
    while handler.server.sent < 300 << 20 and not handler.server.stop.is_set():
        handler.wfile.write(chunk)
        handler.server.sent += len(chunk)


def llm_policy(url: str, **fields):
    return TrainingPolicy.model_validate(
        {
            "judge": {
                "kind": "llm",
                "url": url,
                "model": "m",
                "rubric": "r",
                "structured": False,
                **fields,
            }
        }
    ).judge


def test_a_dripping_endpoint_cannot_hold_a_call_past_its_deadline():
    with listening(drip) as (url, _):
        llm = judge_for(llm_policy(url, timeout_s=2, retries=0, max_seconds=5), None)
        started = time.monotonic()
        first = llm.compare(PROMPT, "a", "b")
        one_call = time.monotonic() - started
        later = [llm.compare(PROMPT, "a", "b") for _ in range(3)]
        run = time.monotonic() - started
    assert first.winner is None and first.rationale == "timed out"
    assert one_call < 2 + 0.5  # timeout_s, whatever the endpoint drips
    assert run < 5 + 0.5  # the run's budget: the last call gets only what is left
    assert [c.rationale for c in later] == ["timed out", "timed out", "time budget spent"]
    assert llm.tally.abstained == {"timed out": 3, "time budget spent": 1}


def test_a_huge_reply_is_abandoned_past_the_size_cap():
    with listening(flood) as (url, server):
        llm = judge_for(llm_policy(url, timeout_s=30, retries=2), None)
        started = time.monotonic()
        verdict = llm.compare(PROMPT, "a", "b")
        elapsed = time.monotonic() - started
    assert verdict.winner is None and verdict.rationale == "reply too large"
    assert llm.calls == 1  # not retried: the same endpoint would answer the same
    assert elapsed < 5
    assert server.sent < 64 << 20  # read up to the cap, not the 300 MB
    assert llm.tally.abstained == {"reply too large": 1}


@pytest.mark.parametrize(
    "variable",
    [
        "LORALOOP_ADMIN_KEY",
        "LORALOOP_DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "PGPASSWORD",
        "DATABASE_URL",
    ],
)
def test_the_trainers_own_credentials_are_never_sent_whatever_the_allow_list(variable, monkeypatch):
    """A policy stored before the operator's allow-list was narrowed (or written to the
    registry by other means) still cannot make the judge send these."""
    monkeypatch.setenv(variable, "the-trainers-secret")
    with listening(answer_verdict) as (url, server):
        policy = llm_policy(url, api_key_env=variable)
        with pytest.raises(JudgeUnavailable, match=f"{variable} is never sent to a judge"):
            judge_for(policy, None, key_variables=("JUDGE_*", variable))
        assert server.authorizations == []


def test_a_key_outside_the_allow_list_is_refused_when_the_judge_is_built(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "elsewhere")
    monkeypatch.setenv("JUDGE_LOOP_KEY", "for-the-judge")
    with listening(answer_verdict) as (url, server):
        with pytest.raises(JudgeUnavailable, match="LORALOOP_JUDGE_KEY_VARIABLES"):
            judge_for(
                llm_policy(url, api_key_env="OPENAI_API_KEY"), None, key_variables=("JUDGE_*",)
            )
        assert server.authorizations == []
        allowed = judge_for(
            llm_policy(url, api_key_env="JUDGE_LOOP_KEY"), None, key_variables=("JUDGE_*",)
        )
        # "A" in both orders: answered, so the two orders disagree.
        assert allowed.compare(PROMPT, "a", "b").rationale == "the two orders disagree"
        assert server.authorizations == ["Bearer for-the-judge"] * 2


SCHEMA_WITH_PATTERNS = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": "^([ab]+)+$"}},
    "patternProperties": {"^([ab]+)+$": {"type": "integer"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "document",
    [
        {"code": "a" * 28 + "!"},  # Python's re: 10 s and doubling per character
        {"code": "ab" * 10_000 + "!"},
        {"ab" * 10_000 + "!": 1},  # a property name against patternProperties
    ],
)
def test_schema_patterns_search_under_the_rules_time_limit(document, tokenizer):
    rules = judge_for(
        TrainingPolicy.model_validate(
            {"judge": {"kind": "rules", "json_schema": SCHEMA_WITH_PATTERNS}}
        ).judge,
        tokenizer,
    )
    started = time.monotonic()
    verdict = rules.score(PROMPT, json.dumps(document))
    assert time.monotonic() - started < 1
    if len(json.dumps(document)) > 100:
        assert verdict.score is None and verdict.rationale == "regex timeout in json_schema"
        assert rules.tally.abstained == {"regex timeout in json_schema": 1}
    else:
        assert verdict.score == 0.5  # valid JSON, not valid against the schema


def test_schema_patterns_still_decide(tokenizer):
    rules = judge_for(
        TrainingPolicy.model_validate(
            {"judge": {"kind": "rules", "json_schema": SCHEMA_WITH_PATTERNS}}
        ).judge,
        tokenizer,
    )
    assert rules.score(PROMPT, '{"code": "abba", "ab": 3}').score == 1.0
    assert rules.score(PROMPT, '{"code": "abc"}').score == 0.5
    assert rules.score(PROMPT, '{"ab": "three"}').score == 0.5  # patternProperties applies
    assert rules.score(PROMPT, '{"other": 1}').score == 0.5  # additionalProperties: false


def test_a_python_judges_malformed_results_are_abstentions_with_their_cause(tmp_path, monkeypatch):
    (tmp_path / "odd_judges.py").write_text(
        "import math\n"
        "def triple(prompt, completion):\n"
        "    return 0.5, 'fine', 'extra'\n"
        "def text(prompt, completion):\n"
        "    return '0.5'\n"
        "def nan(prompt, completion):\n"
        "    return math.nan, 'nan'\n"
        "def over(prompt, completion):\n"
        "    return 1.5\n"
        "def unsure(prompt, completion):\n"
        "    return None, 'cannot tell'\n"
        "class Loud:\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "def loud(prompt, completion):\n"
        "    return 0.5, Loud()\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    expected = {
        "triple": "returned a 3-tuple, not (score, rationale)",
        "text": "returned str, not a score",
        "nan": "score out of [0, 1]",
        "over": "score out of [0, 1]",
        "unsure": "cannot tell",
        "loud": "raised RuntimeError",
    }
    for name, cause in expected.items():
        judge = judge_for(
            TrainingPolicy.model_validate(
                {"judge": {"kind": "python", "target": f"odd_judges:{name}"}}
            ).judge,
            None,
        )
        verdict = judge.score(PROMPT, "x")
        assert (verdict.score, verdict.rationale) == (None, cause), name
        assert judge.compare(PROMPT, "x", "y").winner is None
        assert judge.tally.abstained == {cause: 3}, name


def test_a_python_judge_that_does_not_import_fails_when_built_saying_why(tmp_path, monkeypatch):
    (tmp_path / "broken_judges.py").write_text(
        "raise RuntimeError('missing config')\ndef judge(p, c):\n    return 1\n"
    )
    (tmp_path / "plain_judges.py").write_text("judge = 3\n")
    monkeypatch.syspath_prepend(tmp_path)
    for target, reason in [
        ("broken_judges:judge", "RuntimeError: missing config"),
        ("no_such_module:judge", "ModuleNotFoundError"),
        ("plain_judges:judge", "is not a function"),
    ]:
        policy = TrainingPolicy.model_validate({"judge": {"kind": "python", "target": target}})
        with pytest.raises(JudgeUnavailable, match=reason):
            judge_for(policy.judge, None)
