"""On-policy samples: the live version's own answers, from the server that serves it.

The trainer asks a server of the same registry for `samples` answers to each prompt from the
live version, pinned (`tenant/name@N`, so a promotion in between cannot mix versions), at the
policy's temperature: vLLM samples them exactly as it serves users. The judge then scores
each answer, and the scores are stored as score feedback like any other, under the judge's
name, so they show in `feedback stats` and are consumed by the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import SamplingPolicy

from .judges import Judge

logger = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 300


@dataclass(frozen=True)
class SampledAnswers:
    prompt: StoredPrompt
    answers: tuple[str, ...]


class ServerSampler:
    """Answers from a loraloop server's OpenAI API, with the operators' credential."""

    def __init__(self, url: str, admin_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=REQUEST_TIMEOUT_S
        )

    def close(self) -> None:
        self._http.close()

    def sample(
        self, model: str, prompt: StoredPrompt, policy: SamplingPolicy, seed: int
    ) -> SampledAnswers:
        fields = {
            "model": model,
            "n": policy.samples,
            "temperature": policy.temperature,
            "max_tokens": policy.max_tokens,
            "seed": seed,
        }
        if prompt.text is not None:
            response = self._http.post("/v1/completions", json={**fields, "prompt": prompt.text})
            response.raise_for_status()
            answers = [choice["text"] for choice in response.json()["choices"]]
        else:
            body = {**fields, "messages": prompt.template_messages()}
            if prompt.tools is not None:
                body["tools"] = prompt.tool_definitions()
            response = self._http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answers = [choice["message"]["content"] or "" for choice in response.json()["choices"]]
        return SampledAnswers(prompt, tuple(answers))


@dataclass(frozen=True)
class SamplingRound:
    """What one run sampled and the judge made of it, for the lineage of its version (the
    scores themselves are feedback rows, consumed by that version)."""

    prompts: Sequence[StoredPrompt]
    samples: int  # answers asked for per prompt
    answers: int
    scored: int

    def lineage(self) -> dict[str, str | int]:
        listed = json.dumps([prompt.to_json() for prompt in self.prompts], sort_keys=True)
        return {
            "sampled_prompts": len(self.prompts),
            "samples": self.samples,
            "sampled_answers": self.answers,
            "scored_answers": self.scored,
            "sampled_prompts_sha256": hashlib.sha256(listed.encode()).hexdigest()[:16],
        }


def prompts_to_sample(
    policy: SamplingPolicy, recorded: Sequence[StoredPrompt]
) -> list[StoredPrompt]:
    """The policy's prompts, then the recorded ones; each once, at most max_prompts."""
    listed = [StoredPrompt.chat([("user", text)]) for text in policy.prompts]
    return list(dict.fromkeys([*listed, *recorded]))[: policy.max_prompts]


def judged_feedback(
    adapter_id: str, version: int, sampled: Sequence[SampledAnswers], judge: Judge
) -> list[NewFeedback]:
    """Every answer the judge scored, as score feedback for the version that answered."""
    feedback = []
    for item in sampled:
        for answer in item.answers:
            if "\x00" in answer:  # no database stores NUL in text; the answer is skipped
                continue
            verdict = judge.score(item.prompt, answer)
            if verdict.score is None:
                continue
            feedback.append(
                NewFeedback(
                    adapter_id,
                    version,
                    "score",
                    item.prompt,
                    completion=answer,
                    score=verdict.score,
                    judge=judge.name,
                    rationale=verdict.rationale[:4000],
                    source="trainer",
                )
            )
    return feedback
