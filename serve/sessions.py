"""Console sign-in sessions as this server uses them: the registry keeps them
(adapters/console_sessions.py), so signing out, or an admin's revoke, ends a session on every
replica, and a restart ends none that is live.

The cookie holds only the session's random token; the page's CSRF token is another random
value of the session's: a page on another origin can make the browser send the cookie but
cannot read the token. A session ends after `idle_s` without use (each use slides it, written
at most every RENEW_AFTER_S so that a busy page does not write at every call) and after
MAX_AGE_S in any case. Whether a tenant key is still valid is the caller's check, on every
request, so that a revoked key's session dies at once; an admin session names a digest of the
admin credential it signed in with, so that changing the credential ends every admin session.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime, timedelta

from loraloop.adapters.console_sessions import ConsoleSessionBook, SessionRecord
from loraloop.adapters.schema import utcnow

SESSION_COOKIE = "loraloop_session"
CSRF_HEADER = "X-CSRF-Token"
ADMIN = "admin"  # how an admin names the admin sessions in a listing
MAX_AGE_S = 12 * 3600
RENEW_AFTER_S = 30
# A cookie's token is 43 characters; anything much longer is not one of ours.
MAX_COOKIE_CHARS = 128


class ConsoleSessions:
    def __init__(
        self,
        book: ConsoleSessionBook,
        idle_s: int,
        admin_key: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.book, self.idle_s, self._clock = book, idle_s, clock
        # "admin:<digest>": a session signed in with another admin credential is no admin's.
        credential = hashlib.sha256((admin_key or "").encode()).hexdigest()[:16]
        self.admin_subject = f"{ADMIN}:{credential}"

    def issue(
        self, subject: str, actor: str, client: str | None = None
    ) -> tuple[SessionRecord, str]:
        """A new session, and the value of its cookie."""
        return self.book.open(subject, actor, client=client)

    def read(self, cookie: str) -> SessionRecord | None:
        """The live session of a cookie; None if it is unknown, ended or expired."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            return None
        session = self.book.find(cookie)
        return session if session is not None and self.is_live(session) else None

    def is_live(self, session: SessionRecord) -> bool:
        return session.live_at(
            self._clock(), timedelta(seconds=self.idle_s), timedelta(seconds=MAX_AGE_S)
        )

    def slide(self, session: SessionRecord) -> bool:
        """Restart the idle clock of a session in use, when the last restart is old enough;
        True when it did (the cookie's max-age is then renewed as well)."""
        if session.seen_ago(self._clock()).total_seconds() < RENEW_AFTER_S:
            return False
        self.book.touch(session.id)
        return True

    def end(self, cookie: str, *, actor: str) -> SessionRecord | None:
        """Sign out: the cookie's session ends everywhere; None when it had none live."""
        session = self.read(cookie)
        return None if session is None else self.book.revoke(session.id, actor=actor)

    def subject(self, named: str) -> str:
        """A listing's subject as stored: "admin" means the admin sessions."""
        return self.admin_subject if named == ADMIN else named

    @staticmethod
    def csrf_valid(session: SessionRecord, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), session.csrf_token.encode()
        )
