"""Text to token ids: the model's chat template for chat, its tokenizer for plain prompts.

The engine receives token ids only, so both engines (and the context-length check) see
exactly the same prompt.
"""

from __future__ import annotations

import jinja2
from transformers import AutoTokenizer

from .errors import ContextLengthExceeded, InvalidRequest


class PromptRenderer:
    def __init__(self, tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    @classmethod
    def load(cls, model: str, max_model_len: int) -> PromptRenderer:
        return cls(AutoTokenizer.from_pretrained(model), max_model_len)

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except jinja2.TemplateError as exc:
            # Templates reject some conversations (e.g. roles out of order) by raising.
            raise InvalidRequest(f"messages: {exc}", param="messages") from exc
        return list(encoded["input_ids"])

    def text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def check_token_ids(self, token_ids: list[int], param: str) -> list[int]:
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for t in token_ids):
            raise InvalidRequest(f"{param}: token ids must be in [0, {vocab})", param=param)
        return token_ids

    def max_tokens_for(
        self, prompt_len: int, requested: int | None, default: int, *, prompt_param: str,
        max_tokens_param: str,
    ) -> int:
        """How many tokens to generate; refuses prompts that leave no room in the context."""
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens, but the "
                f"prompt has {prompt_len} tokens. Shorten the prompt.",
                param=prompt_param,
            )
        if requested is None:
            return min(default, room)
        if requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens. The "
                f"prompt has {prompt_len} tokens and {max_tokens_param} asks for {requested}; "
                f"lower {max_tokens_param} to {room} or shorten the prompt.",
                param=max_tokens_param,
            )
        return requested
