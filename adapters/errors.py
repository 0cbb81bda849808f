"""The adapter registry's errors.

They describe what went wrong in registry terms only; the server maps each class to an HTTP
status in one place. Callers match on the class, never on the message.
"""

from __future__ import annotations


class RegistryError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RegistryError):
    """A tenant, adapter, version or key that does not exist."""


class Conflict(RegistryError):
    """The current state does not allow the operation (a lost compare-and-swap, a rejected
    version, ...)."""


class AdapterInvalid(RegistryError):
    """An uploaded adapter was refused; `problems` lists everything wrong with it at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("The adapter was refused: " + "; ".join(problems))
        self.problems = list(problems)


class InvalidArgument(RegistryError):
    """A value the registry cannot accept, such as a malformed name or an out-of-range percent."""


class RegistryUnavailable(RegistryError):
    """The registry database cannot be reached (stopped, unreachable, locked past the wait).
    Nothing was written; the same request can be sent again later."""

    def __init__(
        self,
        message: str = "The registry database is unavailable; nothing was written. Retry shortly.",
    ) -> None:
        super().__init__(message)


class StorageFull(RegistryError):
    """The weight store's filesystem has no room (or the quota is used up): nothing was
    stored, and what was partly written is gone."""


class PromptRejected(RegistryError):
    """A prompt the base model's chat template or vocabulary cannot take; `param` names the
    request field it came from."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(PromptRejected):
    """A prompt (with the tokens asked for) longer than the model's context."""
