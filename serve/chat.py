"""Chat wire types that more than one API takes: a conversation's messages, the tools it
offers, and how the registry keeps them. The OpenAI API and the feedback API both import
them from here; neither imports the other.

Requests are strict (no type coercion, unknown fields refused) so a client's mistake is
reported instead of silently reinterpreted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraloop.adapters.prompts import StoredMessage, StoredPrompt, StoredToolCall
from loraloop.adapters.text import Text

MAX_ID_CHARS = 256
MAX_DESCRIPTION_CHARS = 4096

ModelName = Annotated[Text, Field(min_length=1, max_length=MAX_ID_CHARS)]
# Function and schema names, as OpenAI allows them.
FunctionName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_-]{1,64}$")]
JSONObject = dict[str, Any]


class StrictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(StrictRequest):
    type: Literal["text"]
    text: Text


class FunctionCall(StrictRequest):
    name: FunctionName
    arguments: Text  # JSON text, as the model wrote it
    # The SDK's own parse of arguments; arguments is what counts.
    parsed_arguments: Any = Field(None, exclude=True)


class ToolCall(StrictRequest):
    id: Text = Field(min_length=1, max_length=MAX_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCall
    # The SDK's stream helpers keep each call's position in the stream on the message.
    index: int | None = Field(None, exclude=True)


class ChatMessage(StrictRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = Field(None, max_length=MAX_ID_CHARS)
    # An empty list is no calls: it is what a response message carries when it has none,
    # and a client sends that message back as the next request's history.
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: Text | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    # Fields of an assistant message as OpenAI's SDK holds it (the response message, dumped
    # whole and sent back as history). They carry nothing the prompt renders, and only their
    # empty values are accepted: anything else would silently be ignored.
    refusal: None = Field(None, exclude=True)
    audio: None = Field(None, exclude=True)
    function_call: None = Field(None, exclude=True)
    annotations: list[None] | None = Field(None, max_length=0, exclude=True)
    # The SDK's own parse of content (`.parse`); content is what counts.
    parsed: Any = Field(None, exclude=True)

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> ChatMessage:
        if self.tool_calls == [] and self.role == "assistant":
            self.tool_calls = None
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id, and only a tool message")
        if self.content is None and self.tool_calls is None:
            raise ValueError("content is required, except in an assistant message with tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(StrictRequest):
    name: FunctionName
    description: Text | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    parameters: JSONObject | None = None  # a JSON Schema; checked in the service
    strict: bool | None = None


class ToolDefinition(StrictRequest):
    type: Literal["function"]
    function: FunctionDefinition


def stored_prompt(
    messages: list[ChatMessage], tools: list[ToolDefinition] | None = None
) -> StoredPrompt:
    """Chat messages (and the tools offered) as the registry keeps and the template renders
    them."""
    return StoredPrompt.chat(
        (
            StoredMessage.of(
                m.role,
                m.text(),
                [
                    StoredToolCall(c.id, c.function.name, c.function.arguments)
                    for c in m.tool_calls or ()
                ],
                m.tool_call_id,
            )
            for m in messages
        ),
        [t.model_dump(mode="json", exclude_none=True) for t in tools] if tools else None,
    )
