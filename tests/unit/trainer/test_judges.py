"""Judges: rule checks, operators' Python functions, and an LLM judge's protocol."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from pydantic import ValidationError

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.judges import JudgeUnavailable, judge_for

from ...support import hanging_endpoint

PROMPT = StoredPrompt.chat([("user", "where is my order?")])


def judge(fields: dict, tokenizer=None):
    return judge_for(TrainingPolicy.model_validate({"judge": fields}).judge, tokenizer)


def test_rules_score_the_share_of_checks_passed(tokenizer):
    rules = judge(
        {"kind": "rules", "max_tokens": 12, "required": [r"\border\b"], "forbidden": ["(?i)sorry"]},
        tokenizer,
    )
    assert rules.score(PROMPT, "your order ships today").score == 1.0
    partly = rules.score(
        PROMPT,
        "sorry, your order is late and will come one day next week or the week after that one",
    )
    assert partly.score == pytest.approx(1 / 3)
    assert "max_tokens" in partly.rationale and "forbidden" in partly.rationale
    assert rules.compare(PROMPT, "sorry", "your order ships").winner == 1
    assert rules.name.startswith("rules:") and rules.tally.judged == 4


def test_rules_check_json_against_a_schema(tokenizer):
    rules = judge(
        {
            "kind": "rules",
            "json_schema": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}},
            },
        },
        tokenizer,
    )
    assert rules.score(PROMPT, '{"ok": true}').score == 1.0
    assert rules.score(PROMPT, '{"ok": 3}').score == 0.5
    assert rules.score(PROMPT, "not json").score == 0.0


def test_a_pattern_that_backtracks_for_ever_abstains_in_time(tokenizer):
    rules = judge({"kind": "rules", "required": ["(x+x+)+y"]}, tokenizer)
    started = time.monotonic()
    verdict = rules.score(PROMPT, "x" * 5000)
    assert verdict.score is None and verdict.rationale == "regex timeout"
    assert time.monotonic() - started < 5
    assert rules.tally.abstained == {"regex timeout": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "rules"}, "at least one check"),
        ({"kind": "rules", "required": ["("]}, "not a regular expression"),
        ({"kind": "rules", "json_schema": {"type": "nope"}}, "not a valid JSON Schema"),
        ({"kind": "python", "target": "os.system"}, "target"),
        ({"kind": "llm", "url": "not a url", "model": "m", "rubric": "r"}, "url"),
        (
            {
                "kind": "llm",
                "url": "http://h/v1",
                "model": "m",
                "rubric": "r",
                "api_key_env": "lower-case",
            },
            "api_key_env",
        ),
    ],
)
def test_bad_judge_policies_are_refused_when_set(fields, message):
    with pytest.raises(ValidationError, match=message):
        TrainingPolicy.model_validate({"judge": fields})


def test_python_judges_are_imported_and_held_to_their_contract(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(
        "def length(prompt, completion):\n"
        "    assert prompt['messages'][0]['content'] == 'where is my order?'\n"
        "    return min(len(completion) / 10, 1.0), 'by length'\n"
        "def broken(prompt, completion):\n"
        "    raise RuntimeError('oops')\n"
        "def wild(prompt, completion):\n"
        "    return 7\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    assert (
        judge({"kind": "python", "target": "my_judges:length"}).score(PROMPT, "12345").score == 0.5
    )
    broken = judge({"kind": "python", "target": "my_judges:broken"})
    assert broken.score(PROMPT, "x").rationale == "raised RuntimeError"
    assert judge({"kind": "python", "target": "my_judges:wild"}).score(PROMPT, "x").score is None
    with pytest.raises(JudgeUnavailable, match="cannot be imported"):
        judge({"kind": "python", "target": "my_judges:missing"})


def llm_judge(replies, monkeypatch, **fields):
    """An LLM judge whose endpoint answers with `replies` in turn (a reply: (status, text))."""
    monkeypatch.setenv("JUDGE_KEY", "secret")
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["Authorization"] == "Bearer secret"
        status, text = replies.pop(0)
        return httpx.Response(status, json={"choices": [{"message": {"content": text}}]})

    from loraloop.trainer.judges.llm import LLMJudge

    policy = TrainingPolicy.model_validate(
        {
            "judge": {
                "kind": "llm",
                "url": "http://judge.test/v1",
                "model": "judge-model",
                "rubric": "brief",
                "api_key_env": "JUDGE_KEY",
                "retries": 1,
                **fields,
            }
        }
    ).judge
    return LLMJudge(policy, key_variables=("JUDGE_*",), transport=httpx.MockTransport(answer)), seen


def test_llm_judge_asks_both_orders_and_abstains_when_they_disagree(monkeypatch):
    a_wins = '{"winner": "A", "reason": "shorter"}'
    b_wins = '{"winner": "B", "reason": "shorter"}'
    llm, seen = llm_judge([(200, a_wins), (200, b_wins), (200, a_wins), (200, a_wins)], monkeypatch)
    assert llm.compare(PROMPT, "short", "long answer").winner == 0
    assert seen[0]["messages"][0]["content"].index("short") < seen[0]["messages"][0][
        "content"
    ].index("long answer")
    assert seen[1]["messages"][0]["content"].index("long answer") < seen[1]["messages"][0][
        "content"
    ].index("short")
    assert seen[0]["response_format"]["type"] == "json_schema"
    assert llm.compare(PROMPT, "short", "long answer").winner is None
    assert llm.tally.abstained == {"the two orders disagree": 1}
    assert llm.name.startswith("llm:v1-") and llm.name.endswith(":judge-model")


def test_llm_judge_counts_malformed_replies_retries_failures_and_keeps_its_budget(monkeypatch):
    llm, _ = llm_judge(
        [
            (200, "I cannot decide"),
            (503, ""),
            (200, "B, because"),
            (200, '{"winner": "A"}'),
            (200, '{"score": 7, "reason": "ok"}'),
            (200, '{"score": 70}'),
        ],
        monkeypatch,
        max_calls=6,
    )
    assert llm.compare(PROMPT, "x", "y").rationale == "malformed reply"
    assert llm.compare(PROMPT, "x", "y").winner == 1  # 503 retried; "B, ..." still parses
    assert llm.score(PROMPT, "x").score == 0.7
    assert llm.score(PROMPT, "x").rationale == "malformed reply"
    assert llm.score(PROMPT, "x").rationale == "call budget spent"
    assert llm.calls == 6
    assert llm.tally.abstained == {"malformed reply": 2, "call budget spent": 1}


def test_llm_judge_needs_its_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    policy = TrainingPolicy.model_validate(
        {
            "judge": {
                "kind": "llm",
                "url": "http://judge.test/v1",
                "model": "m",
                "rubric": "r",
                "api_key_env": "JUDGE_KEY",
            }
        }
    ).judge
    with pytest.raises(JudgeUnavailable, match="JUDGE_KEY is not set"):
        judge_for(policy, None, key_variables=("JUDGE_*",))


def test_a_hanging_judge_keeps_the_run_within_its_time_budget():
    with hanging_endpoint(3.0) as url:
        llm = judge(
            {
                "kind": "llm",
                "url": url,
                "model": "m",
                "rubric": "r",
                "timeout_s": 0.5,
                "retries": 1,
                "max_seconds": 2,
            }
        )
        started = time.monotonic()
        comparisons = [llm.compare(PROMPT, "a", "b") for _ in range(5)]
        elapsed = time.monotonic() - started
    assert [c.winner for c in comparisons] == [None] * 5
    assert elapsed < 2 + 0.5 + 1  # the budget, one call's timeout, and slack
    assert llm.tally.judged == 5
    assert set(llm.tally.abstained) == {"timed out", "time budget spent"}
