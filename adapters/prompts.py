"""Prompts as the registry stores them, and as a base model's tokenizer renders them.

A stored prompt is chat messages (with the tool definitions the request offered, if any) or
plain text, kept with feedback and recorded completions. The server renders a request's
prompt with `PromptRenderer` and the trainer renders stored prompts with the same class, so
training sees exactly the token ids a request produced: the chat template with the
generation prompt for messages, the tokenizer (with its BOS) for text.

Everything here is frozen and hashable, so the trainer can group feedback by prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ContextLengthExceeded, PromptRejected

# OpenAI's "developer" role is the system role of newer models; templates know only "system".
_TEMPLATE_ROLE = {"developer": "system"}


@dataclass(frozen=True)
class StoredToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model (or the client) wrote it


@dataclass(frozen=True)
class StoredMessage:
    role: str  # as rendered: "developer" is stored as "system"
    content: str  # "" for an assistant turn that only calls tools
    tool_calls: tuple[StoredToolCall, ...] = ()
    tool_call_id: str | None = None  # a tool message: the call it answers

    @classmethod
    def of(
        cls,
        role: str,
        content: str,
        tool_calls: Iterable[StoredToolCall] = (),
        tool_call_id: str | None = None,
    ) -> StoredMessage:
        return cls(_TEMPLATE_ROLE.get(role, role), content, tuple(tool_calls), tool_call_id)

    @classmethod
    def from_json(cls, stored: dict) -> StoredMessage:
        calls = tuple(
            StoredToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in stored.get("tool_calls", ())
        )
        return cls(stored["role"], stored["content"], calls, stored.get("tool_call_id"))

    def to_json(self) -> dict:
        stored: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            stored["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            stored["tool_call_id"] = self.tool_call_id
        return stored

    def for_template(self) -> dict:
        message = self.to_json()
        for call in message.get("tool_calls", ()):
            # Chat templates write arguments with `tojson`: give them the object, as vLLM
            # does, so the text is the model's own format rather than a quoted string.
            call["function"]["arguments"] = _json_or_text(call["function"]["arguments"])
        return message


@dataclass(frozen=True)
class StoredPrompt:
    """Exactly one of `text` and `messages`; `tools` only with messages."""

    text: str | None = None
    messages: tuple[StoredMessage, ...] | None = None
    # The tool definitions as the request sent them, as JSON text: hashable, and in the
    # client's key order, which `tojson` in a chat template keeps.
    tools: str | None = None

    @classmethod
    def chat(
        cls, messages: Iterable[tuple[str, str] | StoredMessage], tools: list[dict] | None = None
    ) -> StoredPrompt:
        return cls(
            messages=tuple(
                m if isinstance(m, StoredMessage) else StoredMessage.of(*m) for m in messages
            ),
            tools=json.dumps(tools, ensure_ascii=False) if tools else None,
        )

    @classmethod
    def from_json(cls, stored: dict) -> StoredPrompt:
        if "text" in stored:
            return cls(text=stored["text"])
        return cls.chat(
            (StoredMessage.from_json(m) for m in stored["messages"]), stored.get("tools")
        )

    @property
    def turns(self) -> tuple[StoredMessage, ...]:
        """The messages of a chat prompt (one without text)."""
        assert self.messages is not None, "a text prompt has no messages"
        return self.messages

    def to_json(self) -> dict:
        if self.text is not None:
            return {"text": self.text}
        stored: dict = {"messages": [m.to_json() for m in self.turns]}
        if self.tools is not None:
            stored["tools"] = json.loads(self.tools)
        return stored

    def template_messages(self) -> list[dict]:
        return [m.for_template() for m in self.turns]

    def tool_definitions(self) -> list[dict] | None:
        return json.loads(self.tools) if self.tools is not None else None

    @property
    def chars(self) -> int:
        """Characters of text the prompt carries (what request limits count)."""
        if self.text is not None:
            return len(self.text)
        return sum(
            len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in self.turns
        ) + len(self.tools or "")


def _json_or_text(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class PromptRenderer:
    # A transformers tokenizer, which types each method's result as the union of every shape
    # it can return (text or ids, one or a batch); the calls here ask for one shape each.
    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)  # token ids are 0 to vocab_size - 1, added ones too

    @classmethod
    def load(cls, model: str, max_model_len: int) -> PromptRenderer:
        from transformers import AutoTokenizer  # heavy: only where prompts are rendered

        return cls(AutoTokenizer.from_pretrained(model), max_model_len)

    def render(self, prompt: StoredPrompt) -> list[int]:
        if prompt.text is not None:
            return self.text(prompt.text)
        return self.chat(prompt.template_messages(), prompt.tool_definitions())

    def chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        import jinja2

        try:
            encoded = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
        except jinja2.TemplateError as exc:
            # Templates reject some conversations (e.g. roles out of order) by raising.
            raise PromptRejected(f"messages: {exc}", param="messages") from exc
        return list(encoded["input_ids"])

    def text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def check_token_ids(self, token_ids: list[int], param: str) -> list[int]:
        vocab = self.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise PromptRejected(f"{param}: token ids must be in [0, {vocab})", param=param)
        return token_ids

    def max_tokens_for(
        self,
        prompt_len: int,
        requested: int | None,
        default: int,
        *,
        prompt_param: str,
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
