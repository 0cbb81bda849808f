"""What every judge answers, and what it counts while answering.

A judge gives one answer a score in [0, 1], or says which of two answers to one prompt is
better; either way with a rationale, or it abstains and says why. Abstaining is an answer,
never an error: a judge that cannot decide (a malformed reply, a timeout, a check that would
run too long) must not stop the run it serves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from loraloop.adapters.prompts import StoredPrompt

# What a judge's name may hold: it is stored with every score it gives (feedback's `judge`).
MAX_NAME_CHARS = 128


class JudgeUnavailable(ValueError):
    """A policy's judge cannot be built here: its Python function does not import, or its
    key variable is unset or not one the operator lets judges use. The message says why
    and how to fix it; whatever the judge serves fails with it (a ValueError, as before)."""


@dataclass(frozen=True)
class Verdict:
    """One answer judged: `score` in [0, 1], or None when the judge abstained."""

    score: float | None
    rationale: str = ""

    @classmethod
    def abstain(cls, reason: str) -> Verdict:
        return cls(None, reason)


@dataclass(frozen=True)
class Comparison:
    """Two answers judged: `winner` is 0 (the first) or 1 (the second), None to abstain."""

    winner: int | None
    rationale: str = ""


Judged = TypeVar("Judged", Verdict, Comparison)


@dataclass
class Tally:
    """What a judge did in one run, for the run's record."""

    judged: int = 0
    abstained: Counter[str] = field(default_factory=Counter)  # by reason

    def count(self, verdict: Judged) -> Judged:
        """Counts it (an abstention by its reason, the rationale) and hands it back."""
        self.judged += 1
        undecided = (
            verdict.score is None if isinstance(verdict, Verdict) else verdict.winner is None
        )
        if undecided:
            self.abstained[verdict.rationale] += 1
        return verdict


class Judge(Protocol):
    name: str  # kind and version (a hash of its prompt or rules), at most MAX_NAME_CHARS
    tally: Tally

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict: ...

    def compare(self, prompt: StoredPrompt, first: str, second: str) -> Comparison: ...

    def close(self) -> None:
        """Let go of what the judge holds (connections); called when its run ends."""


class ScoringJudge:
    """A judge that scores answers one by one compares them by their scores."""

    name: str
    tally: Tally

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        raise NotImplementedError

    def compare(self, prompt: StoredPrompt, first: str, second: str) -> Comparison:
        a, b = self.score(prompt, first), self.score(prompt, second)
        if a.score is None or b.score is None:
            return Comparison(None, a.rationale if a.score is None else b.rationale)
        if a.score == b.score:
            return Comparison(None, "tie")
        return Comparison(0 if a.score > b.score else 1, f"{a.score:.2f} against {b.score:.2f}")

    def close(self) -> None:
        pass
