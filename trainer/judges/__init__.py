"""Judges: what scores and compares answers when no user has (learning without labels)."""

from __future__ import annotations

from loraloop.adapters.training_policy import JudgePolicy, LLMJudgePolicy, RuleJudgePolicy

from .interface import Comparison, Judge, JudgeUnavailable, Tally, Verdict

__all__ = ["Comparison", "Judge", "JudgeUnavailable", "Tally", "Verdict", "judge_for"]


def judge_for(policy: JudgePolicy, tokenizer, *, key_variables: tuple[str, ...] = ()) -> Judge:
    """The judge a policy names; JudgeUnavailable (a ValueError) when it cannot be built here
    (a Python judge that does not import, an LLM judge whose key variable is unset or not in
    `key_variables`, the operator's allow-list: none unless given)."""
    if isinstance(policy, RuleJudgePolicy):
        from .rules import RuleJudge

        return RuleJudge(policy, tokenizer)
    if isinstance(policy, LLMJudgePolicy):
        from .llm import LLMJudge

        return LLMJudge(policy, key_variables=key_variables)
    from .function import FunctionJudge

    return FunctionJudge(policy)
