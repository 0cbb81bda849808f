"""What the request log and metrics record about one request, filled in as it is learned.

`RequestMetrics` (middleware.py) attaches a fresh `RequestFacts` to the ASGI scope before the
app runs and reads it when the response is sent; authentication records the caller, and the
generation routes record the adapter version that served. One typed object under one key,
so the two sides cannot drift apart.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request

# Where a request could not be tied to an adapter (refused before resolution, or not a
# generation): keeps the metrics label bounded whatever the client sent.
NO_ADAPTER = "-"
_SCOPE_KEY = "loraloop.request_facts"


@dataclass
class RequestFacts:
    caller: str | None = None
    adapter: str = NO_ADAPTER
    version: str = NO_ADAPTER


def attach(scope: MutableMapping[str, Any]) -> RequestFacts:
    facts = RequestFacts()
    scope.setdefault("state", {})[_SCOPE_KEY] = facts
    return facts


def facts_of(request: Request) -> RequestFacts:
    """The request's facts; outside the metrics middleware (admin routes), a throwaway."""
    return request.scope.get("state", {}).get(_SCOPE_KEY) or RequestFacts()
