"""Console sign-in sessions: a signed cookie that any replica can check with no session store.

The cookie holds who signed in (the admin, or a tenant key by its prefix), the name the
history records, when it was issued and when it was last used, signed with HMAC-SHA256 under
a key derived from the admin credential that every replica shares: changing that credential
ends every session. A session ends after `idle_s` without use (each use slides it) and after
MAX_AGE_S in any case. Whether a tenant key is still valid is the caller's check, on every
request, so that a revoked key's session dies at once.

The CSRF token is an HMAC of the session's subject and issue time under a second derived
key: a page on another origin can make the browser send the cookie but cannot read the
token, and cannot compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "loraloop_session"
CSRF_HEADER = "X-CSRF-Token"
ADMIN_SUBJECT = "admin"
MAX_AGE_S = 12 * 3600
# A used session is re-issued (its idle clock restarted) at most this often, so that a page
# making many calls does not rewrite its cookie on each one.
RENEW_AFTER_S = 30


@dataclass(frozen=True)
class Session:
    subject: str  # ADMIN_SUBJECT, or a tenant key's prefix
    actor: str  # how the history names what this session does
    issued_at: int
    last_seen: int

    @property
    def is_admin(self) -> bool:
        return self.subject == ADMIN_SUBJECT


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, secret: bytes, idle_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._cookie_key = hmac.digest(secret, b"loraloop console cookie", hashlib.sha256)
        self._csrf_key = hmac.digest(secret, b"loraloop console csrf", hashlib.sha256)
        self.idle_s, self._clock = idle_s, clock

    @classmethod
    def for_credential(cls, admin_key: str | None, idle_s: int) -> SessionSigner:
        """Keyed by the admin credential the replicas share; without one (auth off, where
        every caller is the local admin anyway) by a secret of this process."""
        secret = admin_key.encode() if admin_key else secrets.token_bytes(32)
        return cls(secret, idle_s)

    def issue(self, subject: str, actor: str) -> tuple[Session, str]:
        now = int(self._clock())
        session = Session(subject, actor, now, now)
        return session, self._encode(session)

    def read(self, cookie: str) -> Session | None:
        """The session, or None if the cookie is forged, malformed or expired."""
        payload, _, signature = cookie.partition(".")
        try:
            expected = hmac.digest(self._cookie_key, payload.encode(), hashlib.sha256)
            if not hmac.compare_digest(_unb64(signature), expected):
                return None
            session = Session(**json.loads(_unb64(payload)))
        except (ValueError, TypeError):
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_s or now - session.issued_at > MAX_AGE_S:
            return None
        return session

    def renewed(self, session: Session) -> str | None:
        """A fresh cookie with the idle clock restarted, when the last one is old enough."""
        now = int(self._clock())
        if now - session.last_seen < RENEW_AFTER_S:
            return None
        return self._encode(Session(session.subject, session.actor, session.issued_at, now))

    def csrf_token(self, session: Session) -> str:
        message = f"{session.subject}\n{session.issued_at}".encode()
        return _b64(hmac.digest(self._csrf_key, message, hashlib.sha256))

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(),
                                                         self.csrf_token(session).encode())

    def _encode(self, session: Session) -> str:
        payload = _b64(json.dumps(vars(session), separators=(",", ":")).encode())
        signature = hmac.digest(self._cookie_key, payload.encode(), hashlib.sha256)
        return f"{payload}.{_b64(signature)}"
