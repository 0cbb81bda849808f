"""Console sessions: signed cookies that expire when idle, and their CSRF tokens."""

from __future__ import annotations

import base64
import json

from loraloop.serve.sessions import ADMIN_SUBJECT, MAX_AGE_S, RENEW_AFTER_S, SessionSigner

IDLE_S = 1800


def signer(now: list[float], secret: bytes = b"the admin credential") -> SessionSigner:
    return SessionSigner(secret, IDLE_S, clock=lambda: now[0])


def test_a_session_reads_back_until_it_idles_out_and_use_slides_it():
    now = [1000.0]
    sessions = signer(now)
    session, cookie = sessions.issue(ADMIN_SUBJECT, "console:alice")
    assert sessions.read(cookie) == session and session.is_admin
    now[0] += RENEW_AFTER_S - 1
    assert sessions.renewed(session) is None  # too soon to rewrite the cookie
    now[0] += IDLE_S - RENEW_AFTER_S
    renewed = sessions.renewed(sessions.read(cookie))
    now[0] += IDLE_S  # idle since the renewal: the renewed cookie lives, the old one not
    assert sessions.read(cookie) is None
    assert sessions.read(renewed).actor == "console:alice"
    now[0] += 1
    assert sessions.read(renewed) is None


def test_no_session_outlives_its_maximum_age_however_it_is_used():
    now = [0.0]
    sessions = signer(now)
    _, cookie = sessions.issue("llk_abcdefgh", "tenant:acme")
    while (session := sessions.read(cookie)) is not None:
        cookie = sessions.renewed(session) or cookie
        now[0] += IDLE_S - 1  # used just often enough never to idle out
    assert MAX_AGE_S < now[0] <= MAX_AGE_S + IDLE_S


def test_forged_and_foreign_cookies_are_refused():
    now = [0.0]
    sessions = signer(now)
    _, cookie = sessions.issue("llk_abcdefgh", "tenant:acme")
    payload, _, signature = cookie.partition(".")
    # The tenant's signature under a payload that claims to be the admin.
    claim = {"subject": ADMIN_SUBJECT, "actor": "x", "issued_at": 0, "last_seen": 0}
    forged_payload = base64.urlsafe_b64encode(json.dumps(claim).encode()).decode().rstrip("=")
    for forged in (f"{forged_payload}.{signature}", payload, "", "a.b", f"{payload}.!!"):
        assert sessions.read(forged) is None, forged
    # Another admin credential (a rotation, or another deployment) signs differently.
    assert signer(now, b"another credential").read(cookie) is None


def test_the_csrf_token_belongs_to_one_session():
    now = [0.0]
    sessions = signer(now)
    first, _ = sessions.issue(ADMIN_SUBJECT, "console:alice")
    now[0] += 1
    second, _ = sessions.issue(ADMIN_SUBJECT, "console:alice")
    token = sessions.csrf_token(first)
    assert sessions.csrf_valid(first, token)
    assert not sessions.csrf_valid(second, token)
    assert not sessions.csrf_valid(first, None) and not sessions.csrf_valid(first, "é")
