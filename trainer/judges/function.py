"""A judge written in Python by the operator: `module:function`, importable where the trainer
runs. Only a policy (set by an admin) names it; no code ever comes through the API.

The function gets the prompt in its stored JSON shape ({"text": ...} or {"messages": [...],
"tools": [...]}) and the answer, and returns a score in [0, 1], (score, rationale), or None to
abstain. Whatever it raises, or returns out of range, is an abstention, counted.
"""

from __future__ import annotations

import importlib
import logging
import math

from loraloop.adapters.policy import PythonJudgePolicy
from loraloop.adapters.prompts import StoredPrompt

from .protocol import MAX_NAME_CHARS, ScoringJudge, Tally, Verdict

logger = logging.getLogger(__name__)


class FunctionJudge(ScoringJudge):
    def __init__(self, policy: PythonJudgePolicy) -> None:
        module_name, function_name = policy.target.split(":")
        try:
            self._function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"the judge {policy.target} cannot be imported: {exc}") from exc
        self.name = f"python:{policy.target}"[:MAX_NAME_CHARS]
        self.tally = Tally()

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        try:
            returned = self._function(prompt.to_json(), completion)
        except Exception as exc:
            logger.warning("judge %s raised on an answer: %r", self.name, exc)
            return self.tally.count(Verdict.abstain(f"raised {type(exc).__name__}"))
        score, rationale = returned if isinstance(returned, tuple) else (returned, "")
        if score is None:
            return self.tally.count(Verdict.abstain(str(rationale) or "abstained"))
        if (isinstance(score, bool) or not isinstance(score, int | float)
                or not math.isfinite(score) or not 0 <= score <= 1):
            return self.tally.count(Verdict.abstain("score out of [0, 1]"))
        return self.tally.count(Verdict(float(score), str(rationale)))
