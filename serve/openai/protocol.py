"""OpenAI wire types for chat completions, completions and models; the chat messages and
tool definitions that the feedback API takes too are in serve/chat.py.

Requests are strict (no type coercion, unknown fields refused) so a client's mistake is
reported instead of silently reinterpreted. Bounds that an operator configures are checked
in the service; the fixed ranges of the OpenAI API are checked here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from loraloop.adapters.text import Text

from ..chat import (
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    ChatMessage,
    FunctionName,
    JSONObject,
    ModelName,
    StrictRequest,
    ToolDefinition,
)

INT64_MAX = 2**63 - 1


class StreamOptions(StrictRequest):
    include_usage: bool = False


class JSONSchemaFormat(StrictRequest):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    name: FunctionName
    description: Text | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    # `schema` would shadow a BaseModel attribute: the field has another name in Python.
    json_schema: JSONObject = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only there")
        return self


class SamplingFields(StrictRequest):
    """Parameters shared by /v1/chat/completions and /v1/completions.

    Optional sampling fields also accept null, which means their default, as OpenAI's do."""

    model: ModelName
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=MAX_ID_CHARS)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # Token id (as a string, the JSON key) -> bias added to its logit; ids and the number of
    # entries are checked in the service, against the vocabulary and the configured bound.
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions, with vLLM's meanings: top_k -1 (or 0) is off.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    response_format: ResponseFormat | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        """The name the client used for the token budget, for error messages."""
        return "max_tokens"

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class NamedFunction(StrictRequest):
    name: FunctionName


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the model may call a tool: tools are offered and not turned off."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | TokenIds | list[TokenIds]
    logprobs: int | None = Field(None, ge=0)


# Responses.


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class OutputFunctionCall(BaseModel):
    name: str
    arguments: str


class OutputToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: OutputFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[OutputToolCall] = Field(default_factory=list)


ChatFinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class _OmitsUnset(BaseModel):
    """Written without its None fields: OpenAI sends a call's id, type and name in its first
    part only and leaves them out of later ones, and the SDK's stream helpers count on it (a
    null type fails their check)."""

    @model_serializer(mode="wrap")
    def _without_nones(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


class FunctionCallDelta(_OmitsUnset):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_OmitsUnset):
    """A part of one tool call: the first names it (id, type, name); later ones add text to
    its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """Both the whole response and, streamed, each chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    live_version: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
