"""Prompts as the registry stores them, and as a base model's tokenizer renders them.

A stored prompt is chat messages or plain text, kept with feedback and recorded completions.
The server renders a request's prompt with `PromptRenderer` and the trainer renders stored
prompts with the same class, so training sees exactly the token ids a request produced: the
chat template with the generation prompt for messages, the tokenizer (with its BOS) for text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ContextLengthExceeded, PromptRejected

# OpenAI's "developer" role is the system role of newer models; templates know only "system".
_TEMPLATE_ROLE = {"developer": "system"}


@dataclass(frozen=True)
class StoredPrompt:
    """Exactly one of `text` and `messages` ((role, content) pairs, roles as rendered)."""

    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def chat(cls, messages: Iterable[tuple[str, str]]) -> StoredPrompt:
        return cls(messages=tuple((_TEMPLATE_ROLE.get(role, role), content)
                                  for role, content in messages))

    @classmethod
    def from_json(cls, stored: dict) -> StoredPrompt:
        if "text" in stored:
            return cls(text=stored["text"])
        return cls(messages=tuple((m["role"], m["content"]) for m in stored["messages"]))

    def to_json(self) -> dict:
        if self.text is not None:
            return {"text": self.text}
        return {"messages": [{"role": role, "content": content}
                             for role, content in self.messages]}

    def template_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


class PromptRenderer:
    def __init__(self, tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    @classmethod
    def load(cls, model: str, max_model_len: int) -> PromptRenderer:
        from transformers import AutoTokenizer  # heavy: only where prompts are rendered

        return cls(AutoTokenizer.from_pretrained(model), max_model_len)

    def render(self, prompt: StoredPrompt) -> list[int]:
        if prompt.text is not None:
            return self.text(prompt.text)
        return self.chat(prompt.template_messages())

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        import jinja2

        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except jinja2.TemplateError as exc:
            # Templates reject some conversations (e.g. roles out of order) by raising.
            raise PromptRejected(f"messages: {exc}", param="messages") from exc
        return list(encoded["input_ids"])

    def text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def check_token_ids(self, token_ids: list[int], param: str) -> list[int]:
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for t in token_ids):
            raise PromptRejected(f"{param}: token ids must be in [0, {vocab})", param=param)
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
