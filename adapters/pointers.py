"""An adapter's live and canary pointers, one pair per base model, and how they move.

The version book (an operator's promote, rollback, canary), the rollout book (a driver's
steps) and the transfer book read and move them through here. A pointer about to change is
locked first (`pointer_row`); every move writes its history row in the caller's transaction.
An operator's move of the pointers ends the rollout under way on that base (superseded), so
the rollout's driver finds it over at its next step.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Conflict
from .history import log_event
from .leased_jobs import ROLLOUTS, release_lease
from .schema import (
    Adapter,
    AdapterVersion,
    Event,
    EventKind,
    LivePointer,
    Rollout,
    RolloutStatus,
    utcnow,
    version_row,
)

UNFINISHED_ROLLOUT = ("active", "paused")


def current_pointer(adapter: Adapter, base: str, *, session: Session) -> LivePointer | None:
    """The adapter's pointers on `base`, to read (None: none were ever set)."""
    return session.get(LivePointer, (adapter.id, base))


def live_version(adapter: Adapter, base: str, *, session: Session) -> int | None:
    pointer = current_pointer(adapter, base, session=session)
    return pointer.live_version if pointer else None


def pointer_row(adapter: Adapter, base: str, *, session: Session) -> LivePointer:
    """The adapter's pointers on one base model, locked for the change about to be made
    (made, empty, when none was set)."""
    pointer = session.get(LivePointer, (adapter.id, base), with_for_update=True)
    if pointer is None:
        pointer = LivePointer(adapter_id=adapter.id, base_fingerprint=base)
        session.add(pointer)
    return pointer


def clear_canary(
    adapter: Adapter, pointer: LivePointer, actor: str, reason: str, *, session: Session
) -> None:
    if pointer.canary_version is not None:
        log_event(
            "canary_cleared",
            adapter,
            actor,
            session=session,
            from_version=pointer.canary_version,
            reason=reason,
        )
        pointer.canary_version = pointer.canary_percent = None


def make_live(
    adapter: Adapter,
    pointer: LivePointer,
    adapter_id: str,
    target: AdapterVersion,
    actor: str,
    *,
    kind: EventKind,
    reason: str | None,
    session: Session,
) -> None:
    previous = pointer.live_version
    if previous is not None:
        version_row(adapter, adapter_id, previous, session=session).status = "retired"
    target.status = "live"
    pointer.live_version = target.number
    if pointer.canary_version == target.number:
        clear_canary(
            adapter, pointer, actor, f"version {target.number} became live", session=session
        )
    log_event(
        kind,
        adapter,
        actor,
        session=session,
        from_version=previous,
        to_version=target.number,
        reason=reason,
    )


def beside_live(
    adapter: Adapter, adapter_id: str, number: int, what: str, *, session: Session
) -> tuple[AdapterVersion, LivePointer]:
    """Version `number` and its base's pointers, when it may serve beside the live version
    (as `what`: a canary, a rollout): a candidate or retired version of a base that has a
    live version."""
    target = version_row(adapter, adapter_id, number, session=session)
    pointer = pointer_row(adapter, target.base_fingerprint, session=session)
    if pointer.live_version is None:
        raise Conflict(
            f"'{adapter_id}' has no live version for {what} to serve beside; promote one first."
        )
    if number == pointer.live_version or target.status == "rejected":
        raise Conflict(
            f"Version {number} of '{adapter_id}' is {target.status}; {what} "
            "must be a candidate or retired version."
        )
    return target, pointer


def previous_live(
    adapter: Adapter, pointer: LivePointer, adapter_id: str, *, session: Session
) -> int:
    """The version a rollback without a target makes live again: the latest one live on the
    pointer's base before the current one, and not rejected since."""
    statuses = dict(
        session.execute(
            select(AdapterVersion.number, AdapterVersion.status).where(
                AdapterVersion.adapter_id == adapter.id
            )
        ).all()
    )
    stack = _live_stack(adapter, pointer.base_fingerprint, session=session)
    for number in reversed(stack[:-1]):
        if number != pointer.live_version and statuses.get(number) != "rejected":
            return number
    raise Conflict(f"'{adapter_id}' has no earlier live version; name one with to_version.")


def _live_stack(adapter: Adapter, base: str, *, session: Session) -> list[int]:
    """The versions that were live on `base`, oldest first, with rolled-back ones popped
    off."""
    stack: list[int] = []
    events = session.scalars(
        select(Event)
        .join(
            AdapterVersion,
            (AdapterVersion.adapter_id == Event.adapter_id)
            & (AdapterVersion.number == Event.to_version),
        )
        .where(
            Event.adapter_id == adapter.id,
            Event.kind.in_(("promote", "rollback")),
            AdapterVersion.base_fingerprint == base,
        )
        .order_by(Event.id)
    )
    for event in events:
        version = event.to_version
        assert version is not None  # joined to the version it names
        earlier = [i for i, v in enumerate(stack[:-1]) if v == version]
        if event.kind == "rollback" and earlier:
            del stack[earlier[-1] + 1 :]
        else:
            stack.append(version)
    return stack


def unfinished_rollout(
    adapter: Adapter, base: str, *, session: Session, lock: bool = False
) -> Rollout | None:
    """The adapter's rollout under way on `base`, if any."""
    query = select(Rollout).where(
        Rollout.adapter_id == adapter.id,
        Rollout.base_fingerprint == base,
        Rollout.status.in_(UNFINISHED_ROLLOUT),
    )
    if lock:
        query = query.with_for_update()
    return session.scalar(query.order_by(Rollout.id.desc()).limit(1))


def close_rollout(rollout: Rollout, status: RolloutStatus, reason: str | None) -> None:
    """The rollout ends as `status`; no driver holds it any more."""
    rollout.status, rollout.finished_at, rollout.reason = status, utcnow(), reason
    release_lease(rollout, ROLLOUTS)


def end_unfinished_rollout(
    adapter: Adapter, pointer: LivePointer, actor: str, why: str, *, session: Session
) -> None:
    """An operator's change of the adapter's pointers ends its rollout on that base
    (superseded), in the same transaction, so the driver's next step finds it over."""
    rollout = unfinished_rollout(adapter, pointer.base_fingerprint, session=session, lock=True)
    if rollout is None:
        return
    close_rollout(rollout, "superseded", why)
    if pointer.canary_version == rollout.candidate_version:
        pointer.canary_version = pointer.canary_percent = None
    log_event(
        "rollout_superseded",
        adapter,
        actor,
        session=session,
        to_version=rollout.candidate_version,
        reason=why,
        rollout=rollout.id,
    )
