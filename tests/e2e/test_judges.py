"""The LLM judge against a real OpenAI-compatible server: this server, serving the demo model.

The demo model answers in short sentences of its own vocabulary and knows nothing of verdicts,
the hardest judge there is: without structured outputs its replies do not parse and every
comparison is an abstention, counted, with no error; with them (response_format, as the judge
asks by default) every reply parses.
"""

from __future__ import annotations

from loraloop.adapters.judge_keys import DEFAULT_KEY_VARIABLES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.judges import judge_for

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME

PROMPT = StoredPrompt.chat([("user", "where is my order?")])
ANSWERS = [
    ("It ships today.", "No idea, sorry, I cannot say anything about it."),
    ("Tomorrow.", "Your order left the city this morning."),
    ("Soon.", "It is late."),
]


def llm_judge(server, monkeypatch, *, structured: bool):
    monkeypatch.setenv("JUDGE_SERVER_KEY", ADMIN_KEY)
    policy = TrainingPolicy.model_validate(
        {
            "judge": {
                "kind": "llm",
                "url": f"{server.url}/v1",
                "model": BASE_MODEL_NAME,
                "rubric": "Prefer the shorter answer.",
                "api_key_env": "JUDGE_SERVER_KEY",
                "structured": structured,
            }
        }
    ).judge
    return judge_for(policy, None, key_variables=DEFAULT_KEY_VARIABLES)


def test_malformed_replies_are_counted_abstentions(vllm_server, monkeypatch):
    judge = llm_judge(vllm_server, monkeypatch, structured=False)
    comparisons = [judge.compare(PROMPT, first, second) for first, second in ANSWERS]
    assert [c.winner for c in comparisons] == [None] * len(ANSWERS)
    assert judge.tally.judged == len(ANSWERS)
    assert judge.tally.abstained == {"malformed reply": len(ANSWERS)}
    assert judge.score(PROMPT, "It ships today.").score is None


def test_structured_replies_always_parse(vllm_server, monkeypatch):
    judge = llm_judge(vllm_server, monkeypatch, structured=True)
    comparisons = [judge.compare(PROMPT, first, second) for first, second in ANSWERS]
    # A verdict, or the two orders disagreeing; never a reply that does not parse.
    assert set(judge.tally.abstained) <= {"the two orders disagree"}
    assert judge.tally.judged == len(comparisons)
    verdict = judge.score(PROMPT, "It ships today.")
    assert verdict.score is not None and 0 <= verdict.score <= 1
    assert judge.calls == 2 * len(ANSWERS) + 1
