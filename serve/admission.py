"""Admission control: bounds on requests in progress, overall and per tenant, so overload is
refused at once (503, or 429 for a tenant over its share), never queued without end."""

from __future__ import annotations

from collections import Counter

from .errors import Overloaded, RateLimited
from .token_budget import TokenBudget


class Ticket:
    """A place taken in the server; released exactly once however the request ends."""

    def __init__(self, gate: AdmissionGate, tenant: str | None) -> None:
        self._gate: AdmissionGate | None = gate
        self._tenant = tenant

    def release(self) -> None:
        if self._gate is not None:
            self._gate.in_progress -= 1
            self._gate.by_tenant[self._tenant] -= 1
            self._gate = None


class AdmissionGate:
    def __init__(
        self,
        max_in_progress: int,
        max_per_tenant: int | None = None,
        budget: TokenBudget | None = None,
    ) -> None:
        self.max_in_progress = max_in_progress
        self.max_per_tenant = max_per_tenant or max_in_progress
        self.budget = budget  # per-tenant tokens per minute; None: unlimited
        self.in_progress = 0
        self.by_tenant: Counter[str | None] = Counter()

    def admit(self, tenant: str | None = None) -> Ticket:
        """`tenant`: whose share the request counts against (None: operators, unbounded)."""
        # A tenant over its own share hears so (429) whether or not the server is also full.
        if tenant is not None and self.by_tenant[tenant] >= self.max_per_tenant:
            raise RateLimited(
                f"Your tenant has {self.max_per_tenant} requests in progress, its limit; "
                "retry after the delay in the Retry-After header."
            )
        if tenant is not None and self.budget is not None and (wait := self.budget.wait_s(tenant)):
            raise RateLimited(
                "Your tenant has used its tokens per minute; retry after the "
                "delay in the Retry-After header.",
                retry_after_s=wait,
            )
        if self.in_progress >= self.max_in_progress:
            raise Overloaded(
                f"The server is at capacity ({self.max_in_progress} requests in progress); "
                "retry after the delay in the Retry-After header."
            )
        self.in_progress += 1
        self.by_tenant[tenant] += 1
        return Ticket(self, tenant)
