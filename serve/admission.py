"""Admission control: a bound on requests in progress, so overload is refused, not queued."""

from __future__ import annotations

from .errors import Overloaded


class Ticket:
    """A place taken in the server; released exactly once however the request ends."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate: AdmissionGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.in_progress -= 1
            self._gate = None


class AdmissionGate:
    def __init__(self, max_in_progress: int) -> None:
        self.max_in_progress = max_in_progress
        self.in_progress = 0

    def admit(self) -> Ticket:
        if self.in_progress >= self.max_in_progress:
            raise Overloaded(
                f"The server is at capacity ({self.max_in_progress} requests in progress); "
                "retry after the delay in the Retry-After header."
            )
        self.in_progress += 1
        return Ticket(self)
