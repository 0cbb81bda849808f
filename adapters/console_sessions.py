"""Console sign-in sessions, kept in the registry so that every replica agrees on them.

A session is a random token in the browser's cookie, stored here only as its sha256 (a copy
of the table signs nobody in), with a random CSRF token of its own. It ends when its owner
signs out or an admin revokes it (on every replica at once, restarts included), after
`idle` without use, and after `max_age` in any case. Whether a tenant key a session signed in
with is still valid is the server's check on every request, not this book's.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from .db import Database, rows_changed
from .errors import NotFound
from .schema import ConsoleSession, utc, utcnow


@dataclass(frozen=True)
class SessionRecord:
    id: int  # how listings and an admin's revoke name it; never the cookie's token
    subject: str  # "admin", or a tenant key's prefix
    actor: str  # how the history names what this session does
    csrf_token: str
    client: str | None  # the address it signed in from
    issued_at: datetime  # UTC, as every time below
    last_seen_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None

    @classmethod
    def of(cls, row: ConsoleSession) -> SessionRecord:
        revoked = utc(row.revoked_at) if row.revoked_at is not None else None
        return cls(
            row.id,
            row.subject,
            row.actor,
            row.csrf_token,
            row.client,
            utc(row.issued_at),
            utc(row.last_seen_at),
            revoked,
            row.revoked_by,
        )

    def live_at(self, now: datetime, idle: timedelta, max_age: timedelta) -> bool:
        return (
            self.revoked_at is None
            and self.seen_ago(now) <= idle
            and now - self.issued_at <= max_age
        )

    def seen_ago(self, now: datetime) -> timedelta:
        return now - self.last_seen_at


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleSessionBook:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db, self.clock = db, clock

    def open(
        self, subject: str, actor: str, *, client: str | None = None
    ) -> tuple[SessionRecord, str]:
        """A new session and the token for its cookie (shown once, like a key)."""
        token, now = secrets.token_urlsafe(32), self.clock()
        row = ConsoleSession(
            token_hash=_hash(token),
            subject=subject,
            actor=actor,
            csrf_token=secrets.token_urlsafe(32),
            client=client,
            issued_at=now,
            last_seen_at=now,
        )
        with self.db.transaction(routing_change=False) as session:
            session.add(row)
            session.flush()
            return SessionRecord.of(row), token

    def find(self, token: str) -> SessionRecord | None:
        """The session of a cookie's token, ended or not; None for a token never issued."""
        with self.db.reading() as session:
            row = session.scalar(
                select(ConsoleSession).where(ConsoleSession.token_hash == _hash(token))
            )
            return SessionRecord.of(row) if row is not None else None

    def touch(self, session_id: int) -> None:
        """Restart a session's idle clock."""
        with self.db.transaction(routing_change=False) as session:
            session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == session_id)
                .values(last_seen_at=self.clock())
            )

    def revoke(self, session_id: int, *, actor: str) -> SessionRecord:
        """End a session (signing out, or an admin); ending an ended one changes nothing."""
        with self.db.transaction(routing_change=False) as session:
            row = session.get(ConsoleSession, session_id, with_for_update=True)
            if row is None:
                raise NotFound(f"There is no console session {session_id}.")
            if row.revoked_at is None:
                row.revoked_at, row.revoked_by = self.clock(), actor
            return SessionRecord.of(row)

    def revoke_all(self, subject: str, *, actor: str) -> int:
        """End every live session of one subject (an operator's, or one key's)."""
        with self.db.transaction(routing_change=False) as session:
            return rows_changed(
                session,
                update(ConsoleSession)
                .where(ConsoleSession.subject == subject, ConsoleSession.revoked_at.is_(None))
                .values(revoked_at=self.clock(), revoked_by=actor),
            )

    def list(self, *, subject: str | None = None, limit: int = 100) -> list[SessionRecord]:
        """Sessions, newest first, ended ones too."""
        query = select(ConsoleSession).order_by(ConsoleSession.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(ConsoleSession.subject == subject)
        with self.db.reading() as session:
            return [SessionRecord.of(row) for row in session.scalars(query)]
