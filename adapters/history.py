"""An adapter's history: the row a change writes (the kinds of change: schema.EventKind).

A change writes its row in its own transaction, so the history never tells of a change that
rolled back, nor misses one that was made.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from .schema import Adapter, Event, EventKind


def log_event(
    kind: EventKind,
    adapter: Adapter,
    actor: str,
    *,
    session: Session,
    from_version: int | None = None,
    to_version: int | None = None,
    reason: str | None = None,
    **detail: object,
) -> None:
    session.add(
        Event(
            kind=kind,
            actor=actor,
            tenant_id=adapter.tenant_id,
            adapter_id=adapter.id,
            from_version=from_version,
            to_version=to_version,
            reason=reason,
            detail=detail,
        )
    )
