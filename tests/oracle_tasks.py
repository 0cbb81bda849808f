"""Simulated tenants for learning without labels: what each wants from answers, as a hidden
oracle reward computed by code, and judges that see it only through noise.

The questions are those the demo model was pretrained on ("tell me about the music"), so its
answers are sentences of vocabulary words that differ in length, in the words they use, and
sometimes in naming the topic: what an oracle can tell apart. The noisy judges are importable
`module:function` targets, as a Python judge in a training policy names them.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from loraloop.trainer.demo_pretraining import TOPICS, question

Oracle = Callable[[str, str], float]  # (the user's question, the answer) -> reward in [0, 1]

SHORT_WORDS = 4
AVOIDED_WORDS = ("people", "city", "do")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
JUDGE_AGREEMENT = 0.8  # how often a noisy judge agrees with the oracle, as an AI judge might


def words(answer: str) -> list[str]:
    return re.findall(r"[a-z]+", answer.lower())


def topic_of(asked: str) -> str:
    return next(word for word in words(asked) if word in TOPICS)


def short(asked: str, answer: str) -> float:
    return float(len(words(answer)) <= SHORT_WORDS)


def on_topic(asked: str, answer: str) -> float:
    return float(topic_of(asked) in words(answer))


def avoids(asked: str, answer: str) -> float:
    return float(not set(words(answer)) & set(AVOIDED_WORDS))


def no_repeats(asked: str, answer: str) -> float:
    """A rule on the whole answer's form: some words, none of them twice."""
    said = words(answer)
    return float(bool(said) and len(said) == len(set(said)))


def has_number(asked: str, answer: str) -> float:
    """A required content item, whatever the question: a number, in words."""
    return float(bool(set(words(answer)) & set(NUMBER_WORDS)))


@dataclass(frozen=True)
class Task:
    name: str
    wants: str
    oracle: Oracle
    judge_target: str  # the noisy judge, as a policy's python judge names it


TASKS = {
    "short": Task(
        "short", f"answers of at most {SHORT_WORDS} words", short, "tests.oracle_tasks:noisy_short"
    ),
    "on_topic": Task(
        "on_topic",
        "answers that name the question's topic",
        on_topic,
        "tests.oracle_tasks:noisy_on_topic",
    ),
    "avoid": Task(
        "avoid",
        f"answers that never say {', '.join(AVOIDED_WORDS)}",
        avoids,
        "tests.oracle_tasks:noisy_avoids",
    ),
    "no_repeats": Task(
        "no_repeats",
        "answers that use no word twice",
        no_repeats,
        "tests.oracle_tasks:noisy_no_repeats",
    ),
    "number": Task(
        "number",
        "answers that mention a number (one to ten, in words)",
        has_number,
        "tests.oracle_tasks:noisy_has_number",
    ),
}

# A rules judge that checks exactly what the `avoid` oracle wants.
AVOID_RULES = {"kind": "rules", "forbidden": [r"\b(" + "|".join(AVOIDED_WORDS) + r")\b"]}


def questions(count: int, seed: int, *, unlike: frozenset[str] = frozenset()) -> list[str]:
    """`count` distinct questions, none of them in `unlike` (held-out sets stay unseen)."""
    rng, found = random.Random(seed), {}
    while len(found) < count:
        asked, _topic = question(rng)
        if asked not in unlike:
            found[asked] = None
    return list(found)


def _user_message(prompt: dict) -> str:
    return next(m["content"] for m in reversed(prompt["messages"]) if m["role"] == "user")


def _noisy(oracle: Oracle) -> Callable[[dict, str], float]:
    """A judge that agrees with `oracle` with probability JUDGE_AGREEMENT: the same answer to
    the same question always gets the same score, as from a judge at temperature 0."""

    def judge(prompt: dict, completion: str) -> float:
        asked = _user_message(prompt)
        truth = oracle(asked, completion)
        draw = hashlib.sha256(f"{asked}\x00{completion}".encode()).digest()
        agrees = int.from_bytes(draw[:8], "big") / 2**64 < JUDGE_AGREEMENT
        return truth if agrees else 1.0 - truth

    return judge


noisy_short = _noisy(short)
noisy_on_topic = _noisy(on_topic)
noisy_avoids = _noisy(avoids)
noisy_no_repeats = _noisy(no_repeats)
noisy_has_number = _noisy(has_number)
