"""Preference pairs as the token ids the server would see, and the log-probability a model
gives an answer.

Prompts go through the PromptRenderer the server uses, so training and evaluation see exactly
the ids a request produces: the chat template with the generation prompt for messages, the
tokenizer (with its BOS) for plain text. A chat answer ends with the end-of-turn token,
because a served answer stops on it; a plain answer is scored as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraloop.adapters.prompts import PromptRenderer

from .pairs import PreferencePair, Prompt

# Feedback can carry long texts; these bound one training sequence. A prompt keeps its end,
# the part next to the answer; an answer keeps its start, the part the model produces first.
MAX_PROMPT_TOKENS = 768
MAX_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    # Only the context-length check needs max_model_len, and it is not used here.
    return PromptRenderer(tokenizer, max_model_len=tokenizer.model_max_length).render(prompt)


def answer_ids(tokenizer, prompt: Prompt, answer: str) -> list[int]:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if prompt.text is not None:
        return ids
    return [*ids, tokenizer.eos_token_id]


def encode_pair(tokenizer, pair: PreferencePair) -> EncodedPair:
    prompt = prompt_ids(tokenizer, pair.prompt)[-MAX_PROMPT_TOKENS:]
    return EncodedPair(
        prompt=tuple(prompt),
        chosen=tuple(answer_ids(tokenizer, pair.prompt, pair.chosen)[:MAX_ANSWER_TOKENS]),
        rejected=tuple(answer_ids(tokenizer, pair.prompt, pair.rejected)[:MAX_ANSWER_TOKENS]),
    )


def answer_logps(model, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]):
    """Sum of log p(answer token | everything before it) for each (prompt, answer): [N]."""
    # each [N, T], on the model's device
    input_ids, attention, is_answer = (t.to(model.device) for t in right_padded(sequences))
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]  # position t predicts token t + 1
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * is_answer[:, 1:]).sum(-1)


def right_padded(sequences):
    # Right padding leaves every real token at the position it has in an unpadded request;
    # padding is masked out of attention and of the sum, so its id (0) does not matter.
    length = max(len(prompt) + len(answer) for prompt, answer in sequences)
    input_ids = torch.zeros((len(sequences), length), dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    is_answer = torch.zeros((len(sequences), length), dtype=torch.float32)
    for row, (prompt, answer) in enumerate(sequences):
        end = len(prompt) + len(answer)
        input_ids[row, :end] = torch.tensor([*prompt, *answer], dtype=torch.long)
        attention[row, :end] = 1
        is_answer[row, len(prompt) : end] = 1
    return input_ids, attention, is_answer
