"""A judge written in Python by the operator: `module:function`, importable where the trainer
runs. Only a policy (set by an admin) names it; no code ever comes through the API.

The function gets the prompt in its stored JSON shape ({"text": ...} or {"messages": [...],
"tools": [...]}) and the answer, and returns a score in [0, 1], (score, rationale), or None to
abstain. Whatever it raises, or returns in another shape or out of range, is an abstention,
counted with its cause. A target that does not import (or is not a function) fails when the
judge is built, with JudgeUnavailable saying why.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import PythonJudgePolicy

from .interface import MAX_NAME_CHARS, JudgeUnavailable, ScoringJudge, Tally, Verdict

logger = logging.getLogger(__name__)
# A rationale is stored with the score; an abstention's reason is a key of the run's tally.
MAX_RATIONALE_CHARS = 300


class FunctionJudge(ScoringJudge):
    def __init__(self, policy: PythonJudgePolicy) -> None:
        self._function = _imported(policy.target)
        self.name = f"python:{policy.target}"[:MAX_NAME_CHARS]
        self.tally = Tally()

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        try:
            verdict = _verdict(self._function(prompt.to_json(), completion))
        except Exception as exc:  # the operator's code, or its result's __str__/__float__
            logger.warning("judge %s raised on an answer: %r", self.name, exc)
            verdict = Verdict.abstain(f"raised {type(exc).__name__}")
        return self.tally.count(verdict)


def _imported(target: str):
    module_name, function_name = target.split(":")
    try:  # a module may raise anything while it is imported, not only ImportError
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        raise JudgeUnavailable(
            f"the judge {target} cannot be imported in the trainer's "
            f"environment: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(function):
        raise JudgeUnavailable(f"the judge {target} is not a function")
    return function


def _verdict(returned) -> Verdict:
    """What the function returned, held to its contract: a score in [0, 1], (score,
    rationale), or None (or (None, reason)) to abstain."""
    if isinstance(returned, tuple):
        if len(returned) != 2:
            return Verdict.abstain(f"returned a {len(returned)}-tuple, not (score, rationale)")
        score, rationale = returned
    else:
        score, rationale = returned, ""
    rationale = str(rationale)[:MAX_RATIONALE_CHARS]
    if score is None:
        return Verdict.abstain(rationale or "abstained")
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        return Verdict.abstain(f"returned {type(score).__name__[:40]}, not a score")
    score = float(score)
    if not math.isfinite(score) or not 0 <= score <= 1:
        return Verdict.abstain("score out of [0, 1]")
    return Verdict(score, rationale)
