"""A short, deterministic pretraining that makes the demo model answer in words.

Random weights answer in byte noise, which no judge or task can tell apart. The corpus here is
generated from the demo vocabulary by a seeded word chain (each word has a few likely
successors), half plain sentences and half chat turns where a user asks about a topic and the
assistant answers with a sentence of varying length that names the topic some of the time. A
few hundred steps teach the model the chat format, when to stop, and sentences whose next word
has a clear favourite (so greedy decoding does not hinge on kernel rounding) while sampling
still varies: the raw material on-policy learning needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import BatchEncoding, LlamaForCausalLM, PreTrainedTokenizerFast

# Topics a user asks about, and the question forms around them: every word is in the demo
# vocabulary, so each is one token or two.
TOPICS = (
    "music",
    "book",
    "water",
    "food",
    "house",
    "city",
    "country",
    "sun",
    "light",
    "night",
    "story",
    "data",
    "model",
    "server",
    "ticket",
    "order",
    "refund",
    "account",
    "password",
    "price",
    "world",
    "people",
    "child",
    "time",
)
QUESTIONS = (
    "tell me about the {}",
    "what is the {}",
    "how can we help the {}",
    "what do you know about the {}",
    "please give me a {}",
    "why is the {} good",
    "where is the {}",
    "can you help with the {}",
)

# Each word's successors and their chances: a clear favourite, then a tail.
SUCCESSOR_WEIGHTS = (0.5, 0.22, 0.13, 0.09, 0.06)
TOPIC_CHANCE = 0.4  # an answer names the question's topic this often
# After its second word, an answer ends after each word with a chance that grows with its
# length: answers of 2 to 24 words, where greedy decoding stops after about seven.
END_CHANCE_PER_WORD = 0.06
MAX_ANSWER_WORDS = 24
START = ""  # the chain's state before a sentence's first word


@dataclass(frozen=True)
class PretrainingRecipe:
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_length: int = 64


class WordChain:
    """A seeded first-order chain over the vocabulary's words."""

    def __init__(self, words: list[str], rng: random.Random) -> None:
        self.words = words
        self.successors = {
            word: rng.sample([other for other in words if other != word], len(SUCCESSOR_WEIGHTS))
            for word in (START, *words)
        }

    def sentence(self, rng: random.Random, topic: str | None = None) -> str:
        word = rng.choices(self.successors[START], SUCCESSOR_WEIGHTS)[0]
        sentence = [word]
        while len(sentence) < MAX_ANSWER_WORDS and (
            rng.random() >= END_CHANCE_PER_WORD * (len(sentence) - 1)
        ):
            word = rng.choices(self.successors[word], SUCCESSOR_WEIGHTS)[0]
            sentence.append(word)
        if topic is not None and rng.random() < TOPIC_CHANCE:
            sentence.insert(rng.randrange(len(sentence) + 1), topic)
        return " ".join(sentence) + "."


def question(rng: random.Random) -> tuple[str, str]:
    """A user question and its topic."""
    topic = rng.choice(TOPICS)
    return rng.choice(QUESTIONS).format(topic), topic


def _examples(
    tokenizer: PreTrainedTokenizerFast, chain: WordChain, rng: random.Random, max_length: int
) -> Iterator[list[int]]:
    while True:
        if rng.random() < 0.5:
            text = chain.sentence(rng)
            ids = tokenizer(text)["input_ids"]  # BOS, then the sentence
        else:
            asked, topic = question(rng)
            messages = [
                {"role": "user", "content": asked},
                {"role": "assistant", "content": chain.sentence(rng, topic)},
            ]
            encoded = tokenizer.apply_chat_template(messages, return_dict=True)
            assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns
            ids = encoded["input_ids"]
        yield ids[:max_length]


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    words: list[str],
    *,
    seed: int,
    recipe: PretrainingRecipe = PretrainingRecipe(),
) -> None:
    """Train `model` in place on the generated corpus; the same seed gives the same weights
    (one thread: results must not depend on how many cores the machine has)."""
    rng = random.Random(seed)
    chain = WordChain(words, rng)
    examples = _examples(tokenizer, chain, rng, recipe.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / recipe.steps)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(recipe.steps):
            batch = [next(examples) for _ in range(recipe.batch_size)]
            input_ids, labels = _padded(batch, tokenizer.pad_token_id)
            loss = model(
                input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels
            ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
        model.eval()


def _padded(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return input_ids, labels
