"""A model behind any OpenAI-compatible chat endpoint judges answers by the tenant's rubric.

Pairwise comparisons are asked twice, the answers in both orders: a judge model's position
bias then cancels, and a disagreement between the two orders is an abstention. The judge
prompt is fixed and versioned; its hash (with the rubric's) is part of the judge's name, which
is stored with every score. Replies that do not parse are abstentions, counted. Each call has
a timeout, failed calls are retried with backoff, and in one run the judge makes at most
`max_calls` calls and takes at most `max_seconds`: past either, it abstains.

httpx's timeouts are per operation (connect, each read), so an endpoint that drips a byte at
a time would hold a call for ever: each call runs on an event loop of its own under one
deadline (the policy's timeout_s, or what is left of the run's budget) covering connect,
headers and the whole body, and the reply is read as a stream, abandoned past MAX_REPLY_BYTES.
The endpoint's key comes from the trainer's environment, from a variable the operator allows
judges to use, never from the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time

import httpx
import regex

from loraloop.adapters.judge_keys import key_refusal
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import LLMJudgePolicy

from .interface import MAX_NAME_CHARS, Comparison, JudgeUnavailable, Tally, Verdict

logger = logging.getLogger(__name__)

PROMPT_VERSION = "v1"
PAIRWISE_PROMPT = """You judge answers by this rubric:
{rubric}

The conversation so far:
{conversation}

Answer A:
{first}

Answer B:
{second}

Which answer follows the rubric better? Reply with JSON only: \
{{"winner": "A" or "B", "reason": "one sentence"}}"""
SCORE_PROMPT = """You judge answers by this rubric:
{rubric}

The conversation so far:
{conversation}

The answer:
{answer}

How well does the answer follow the rubric, from 0 (not at all) to 10 (fully)? Reply with \
JSON only: {{"score": 0 to 10, "reason": "one sentence"}}"""
PAIRWISE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["winner", "reason"],
            "properties": {
                "winner": {"enum": ["A", "B"]},
                "reason": {"type": "string", "maxLength": 160},
            },
        },
    },
}
SCORE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "score",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["score", "reason"],
            "properties": {
                "score": {"type": "integer", "minimum": 0, "maximum": 10},
                "reason": {"type": "string", "maxLength": 160},
            },
        },
    },
}
# A reply that is not JSON may still start with the verdict ("B. Because...").
_LEADING_WINNER = regex.compile(r"^\W*(A|B)\b")
# Enough for the JSON verdict whatever the tokenizer: its reason is at most 160 characters.
MAX_REPLY_TOKENS = 256
# A verdict's reply is a few hundred bytes; anything near this is not one.
MAX_REPLY_BYTES = 1 << 20
BACKOFF_S = 0.5


class ReplyTooLarge(Exception):
    pass


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


class LLMJudge:
    def __init__(
        self,
        policy: LLMJudgePolicy,
        *,
        key_variables: tuple[str, ...] = (),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`key_variables`: the variables the operator lets judges use as their key (none
        unless given)."""
        self.policy = policy
        prompts = _hash(PAIRWISE_PROMPT + SCORE_PROMPT)
        self.name = (
            f"llm:{PROMPT_VERSION}-{prompts}:rubric-{_hash(policy.rubric)}:{policy.model}"
        )[:MAX_NAME_CHARS]
        self.tally = Tally()
        self.calls = 0
        self._deadline: float | None = None  # set by the first call: the run's time budget
        self._headers = _auth_headers(policy.api_key_env, key_variables)
        self._transport = transport
        # Built once: each call has a client of its own, on an event loop of its own.
        self._tls = httpx.create_ssl_context()

    def close(self) -> None:
        pass  # every call closes its own connection

    def compare(self, prompt: StoredPrompt, first: str, second: str) -> Comparison:
        forward = self._ask_pairwise(prompt, first, second)
        if forward.winner is None:
            return self.tally.count(forward)
        backward = self._ask_pairwise(prompt, second, first)
        if backward.winner is None:
            return self.tally.count(backward)
        if forward.winner != 1 - backward.winner:
            return self.tally.count(Comparison(None, "the two orders disagree"))
        return self.tally.count(forward)

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        reply = self._call(
            SCORE_PROMPT.format(
                rubric=self.policy.rubric, conversation=_conversation(prompt), answer=completion
            ),
            SCORE_FORMAT,
        )
        if isinstance(reply, Verdict):  # the call itself came to nothing
            return self.tally.count(reply)
        try:
            verdict = _json(reply)
            score = verdict["score"]
            if (
                isinstance(score, bool)
                or not isinstance(score, int | float)
                or not 0 <= score <= 10
            ):
                raise ValueError(score)
        except (ValueError, TypeError, KeyError):
            return self.tally.count(Verdict.abstain("malformed reply"))
        return self.tally.count(Verdict(score / 10, str(verdict.get("reason", ""))[:300]))

    def _ask_pairwise(self, prompt: StoredPrompt, first: str, second: str) -> Comparison:
        reply = self._call(
            PAIRWISE_PROMPT.format(
                rubric=self.policy.rubric,
                conversation=_conversation(prompt),
                first=first,
                second=second,
            ),
            PAIRWISE_FORMAT,
        )
        if isinstance(reply, Verdict):
            return Comparison(None, reply.rationale)
        winner, reason = _parse_winner(reply)
        if winner is None:
            return Comparison(None, "malformed reply")
        return Comparison("AB".index(winner), reason)

    def _call(self, content: str, response_format: dict) -> str | Verdict:
        """The reply's text, or an abstention saying why there is none."""
        body = {
            "model": self.policy.model,
            "temperature": 0,
            "max_tokens": MAX_REPLY_TOKENS,
            "messages": [{"role": "user", "content": content}],
        }
        if self.policy.structured:
            body["response_format"] = response_format
        if self._deadline is None:
            self._deadline = time.monotonic() + self.policy.max_seconds
        for attempt in range(self.policy.retries + 1):
            if self.calls >= self.policy.max_calls:
                return Verdict.abstain("call budget spent")
            left = self._deadline - time.monotonic()
            if left <= 0:
                return Verdict.abstain("time budget spent")
            self.calls += 1
            try:
                status, reply = self._post(body, min(self.policy.timeout_s, left))
            except (TimeoutError, httpx.TimeoutException):
                failure = "timed out"
            except ReplyTooLarge:
                return Verdict.abstain("reply too large")  # retrying will not help
            except httpx.HTTPError as exc:
                failure = f"unreachable ({type(exc).__name__})"
            else:
                if status < 300:
                    try:
                        return json.loads(reply)["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        return Verdict.abstain("malformed response")
                failure = f"HTTP {status}"
                if status < 500 and status != 429:
                    return Verdict.abstain(f"refused ({failure})")  # retrying will not help
            if attempt < self.policy.retries:
                time.sleep(min(BACKOFF_S * 2**attempt, max(self._deadline - time.monotonic(), 0)))
        logger.warning("judge %s: giving up on a call: %s", self.name, failure)
        return Verdict.abstain(failure)

    def _post(self, body: dict, seconds: float) -> tuple[int, bytes]:
        """(status, reply body) of one call that ends within `seconds`, whatever the endpoint
        does: TimeoutError past it, ReplyTooLarge past MAX_REPLY_BYTES."""

        async def within() -> tuple[int, bytes]:
            return await asyncio.wait_for(self._stream(body, seconds), seconds)

        return asyncio.run(within())

    async def _stream(self, body: dict, seconds: float) -> tuple[int, bytes]:
        async with (
            httpx.AsyncClient(
                base_url=str(self.policy.url).rstrip("/"),
                headers=self._headers,
                timeout=seconds,
                transport=self._transport,
                verify=self._tls,
            ) as http,
            http.stream("POST", "/chat/completions", json=body) as response,
        ):
            if response.status_code >= 300:
                return response.status_code, b""
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_REPLY_BYTES:
                    raise ReplyTooLarge
            return response.status_code, bytes(content)


def _auth_headers(variable: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """The bearer header from the key variable, checked again here (the operator's
    allow-list may have changed since the policy was set): no request goes out without it."""
    if variable is None:
        return {}
    if why := key_refusal(variable, allowed):
        raise JudgeUnavailable(f"the judge's key variable is refused: {why}")
    key = os.environ.get(variable)
    if not key:
        raise JudgeUnavailable(
            f"the judge's key variable {variable} is not set in the trainer's environment"
        )
    return {"Authorization": f"Bearer {key}"}


def _json(reply: str):
    # strict=False: a model may write control characters inside a JSON string, which the
    # strict reader refuses although the verdict is plain.
    return json.loads(reply, strict=False)


def _parse_winner(reply: str) -> tuple[str | None, str]:
    try:
        verdict = _json(reply)
    except ValueError:
        match = _LEADING_WINNER.search(reply)
        return (match.group(1), reply[:300]) if match else (None, "")
    if isinstance(verdict, dict) and verdict.get("winner") in ("A", "B"):
        return verdict["winner"], str(verdict.get("reason", ""))[:300]
    return None, ""


def _conversation(prompt: StoredPrompt) -> str:
    if prompt.text is not None:
        return prompt.text
    return "\n".join(f"{m.role}: {m.content}" for m in prompt.turns)
