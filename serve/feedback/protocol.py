"""Wire types of the feedback API: what applications say about answers.

A request is either a preference (`chosen` over `rejected` for a prompt) or a score (`score`
in [0, 1] for one completion, from a named `judge`), for a prompt given as `prompt` text or
chat `messages`, or by naming a recorded completion with `completion_id`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from loraloop.adapters.text import StoredText, storable

from ..chat import ChatMessage, ModelName, StrictRequest, ToolDefinition
from ..record_models import FromRecord

MAX_TEXT_CHARS = 32_000
MAX_MESSAGES = 256
Text = Annotated[StoredText, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
CompletionId = Annotated[StoredText, StringConstraints(min_length=1, max_length=100)]


class FeedbackRequest(StrictRequest):
    adapter: ModelName | None = Field(
        None, description="tenant/name, or tenant/name@N for the version that answered"
    )
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    tools: list[ToolDefinition] | None = Field(
        None, max_length=128, description="the tools the request offered, with messages"
    )
    chosen: Text | None = None
    rejected: Text | None = None
    completion_id: CompletionId | None = None
    choice: int = Field(0, ge=0, le=1023, description="which choice of completion_id")
    completion: Text | None = None
    score: float | None = Field(None, ge=0, le=1)
    judge: Annotated[StoredText, StringConstraints(min_length=1, max_length=128)] | None = None
    rationale: Annotated[StoredText, StringConstraints(max_length=4000)] | None = None

    @property
    def kind(self) -> Literal["preference", "score"]:
        return "score" if self.score is not None else "preference"

    @field_validator("messages")
    @classmethod
    def _storable_messages(cls, messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
        # Chat messages are shared with the generation API, where NUL is harmless; feedback
        # keeps them in the database, which refuses it.
        for number, message in enumerate(messages or ()):
            try:
                storable(message.text())
                for call in message.tool_calls or ():
                    storable(call.function.arguments)
            except ValueError as exc:
                raise ValueError(f"message {number}: {exc}") from None
        return messages

    @model_validator(mode="after")
    def _one_shape(self) -> FeedbackRequest:
        problems = self._shape_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _shape_problems(self) -> list[str]:
        if self.score is not None and not math.isfinite(self.score):
            return ["score must be a number in [0, 1]"]
        if self.kind == "preference":
            return self._preference_problems()
        return self._score_problems()

    def _preference_problems(self) -> list[str]:
        problems = _prompt_problems(self)
        if self.chosen is None or self.rejected is None:
            problems.append("a preference needs both chosen and rejected (or send a score)")
        elif self.chosen == self.rejected:
            problems.append("chosen and rejected are the same text")
        if self.completion_id or self.completion or self.judge:
            problems.append("completion_id, completion and judge belong to score feedback")
        return problems

    def _score_problems(self) -> list[str]:
        problems = [] if self.judge else ["a score needs judge: who or what gave it"]
        if self.chosen is not None or self.rejected is not None:
            problems.append("chosen and rejected belong to preference feedback")
        if self.completion_id is not None:
            if self.adapter or self.prompt or self.messages or self.tools or self.completion:
                problems.append(
                    "with completion_id, send no adapter, prompt, messages or "
                    "completion: they come from the recorded completion"
                )
            return problems
        problems += _prompt_problems(self)
        if self.completion is None:
            problems.append("a score needs completion_id, or completion with its prompt")
        return problems


def _prompt_problems(request: FeedbackRequest) -> list[str]:
    problems = [] if request.adapter else ["adapter is required"]
    if (request.prompt is None) == (request.messages is None):
        problems.append("send the prompt as either prompt (text) or messages (chat), not both")
    if request.tools and request.messages is None:
        problems.append("tools go with messages: they are part of a chat prompt")
    return problems


class FeedbackPublic(FromRecord):
    id: int
    object: Literal["feedback"] = "feedback"
    adapter: str = Field(validation_alias="adapter_id")
    version: int | None
    kind: str
    status: str
    created_at: datetime


class BatchLineResult(BaseModel):
    line: int
    status: int
    feedback: FeedbackPublic | None = None
    error: dict | None = None


class BatchResult(BaseModel):
    object: Literal["list"] = "list"
    created: int
    failed: int
    data: list[BatchLineResult]


class FeedbackStatsPublic(FromRecord):
    adapter: str = Field(validation_alias="adapter_id")
    total: int
    by_kind: dict[str, int]
    by_status: dict[str, int]
    by_version: dict[str, int]
