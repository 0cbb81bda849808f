"""Console sessions kept in the registry (SQLite and PostgreSQL): random tokens, idle and
absolute expiry, sign-out and an admin's revoke that every replica sees; and the sign-in
throttle."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loraloop.adapters.console_sessions import ConsoleSessionBook
from loraloop.adapters.db import Database
from loraloop.adapters.schema import utcnow
from loraloop.serve.sessions import MAX_AGE_S, RENEW_AFTER_S, ConsoleSessions
from loraloop.serve.sign_ins import SignInThrottle

IDLE_S = 1800
ADMIN = "admin:0123456789abcdef"  # as stored for the admin credential's sessions


@pytest.fixture
def db(database):
    db = Database(database)
    db.upgrade()
    yield db
    db.dispose()


def replica(db: Database, now: list) -> ConsoleSessions:
    """One server's view of the sessions, on a clock the test moves."""

    def clock():
        return now[0]

    return ConsoleSessions(ConsoleSessionBook(db, clock=clock), IDLE_S, "admin-key", clock=clock)


def test_two_sign_ins_in_the_same_second_get_different_cookies_and_tokens(db):
    sessions = replica(db, [utcnow()])
    first, first_cookie = sessions.issue(ADMIN, "console:alice")
    second, second_cookie = sessions.issue(ADMIN, "console:alice")
    assert first_cookie != second_cookie and first.csrf_token != second.csrf_token
    assert sessions.read(first_cookie).id == first.id
    assert sessions.csrf_valid(first, first.csrf_token)
    assert not sessions.csrf_valid(first, second.csrf_token)
    assert not sessions.csrf_valid(first, None)


def test_signing_out_ends_the_session_on_every_replica_and_after_a_restart(db, database):
    now = [utcnow()]
    one, other = replica(db, now), replica(db, now)
    _, kept = one.issue(ADMIN, "console:alice")
    _, ended = one.issue("llk_abcdefgh", "tenant:acme")
    assert other.read(ended) is not None
    assert one.end(ended, actor="sign-out") is not None
    assert other.read(ended) is None and one.read(ended) is None
    assert one.end(ended, actor="sign-out") is None  # nothing left to end
    restarted = Database(database)  # a new process on the same registry
    try:
        after = replica(restarted, now)
        assert after.read(kept).actor == "console:alice"
        assert after.read(ended) is None
    finally:
        restarted.dispose()


def test_a_session_idles_out_and_use_slides_it(db):
    now = [utcnow()]
    sessions = replica(db, now)
    _, cookie = sessions.issue(ADMIN, "console:alice")
    now[0] += timedelta(seconds=RENEW_AFTER_S - 1)
    assert not sessions.slide(sessions.read(cookie))  # too soon to write
    now[0] += timedelta(seconds=IDLE_S - RENEW_AFTER_S)
    assert sessions.slide(sessions.read(cookie))  # idle clock restarted
    now[0] += timedelta(seconds=IDLE_S)
    assert sessions.read(cookie) is not None
    now[0] += timedelta(seconds=1)
    assert sessions.read(cookie) is None


def test_no_session_outlives_its_maximum_age_however_it_is_used(db):
    now = [utcnow()]
    sessions = replica(db, now)
    _, cookie = sessions.issue("llk_abcdefgh", "tenant:acme")
    while (session := sessions.read(cookie)) is not None:
        sessions.slide(session)
        now[0] += timedelta(seconds=IDLE_S - 1)  # used just often enough never to idle out
    age = (now[0] - sessions.book.find(cookie).issued_at).total_seconds()
    assert MAX_AGE_S < age <= MAX_AGE_S + IDLE_S


def test_unknown_forged_and_oversized_cookies_are_refused(db):
    sessions = replica(db, [utcnow()])
    _, cookie = sessions.issue(ADMIN, "console:alice")
    for forged in ("", cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), "x" * 10_000):
        assert sessions.read(forged) is None


def test_an_admin_lists_and_revokes_an_operators_sessions(db):
    now = [utcnow()]
    sessions = replica(db, now)
    _, alice = sessions.issue(ADMIN, "console:alice", "127.0.0.2")
    _, bob = sessions.issue(ADMIN, "console:bob")
    _, tenant = sessions.issue("llk_abcdefgh", "tenant:acme")
    listed = sessions.book.list(subject=ADMIN)
    assert [s.actor for s in listed] == ["console:bob", "console:alice"]
    assert listed[1].client == "127.0.0.2"
    assert not hasattr(listed[0], "token_hash")
    revoked = sessions.book.revoke(listed[0].id, actor="admin:carol")
    assert (revoked.revoked_by, sessions.read(bob)) == ("admin:carol", None)
    assert sessions.book.revoke_all(ADMIN, actor="admin:carol") == 1
    assert sessions.read(alice) is None and sessions.read(tenant) is not None


def test_the_eleventh_wrong_key_in_a_minute_waits_and_others_do_not():
    now = [0.0]
    throttle = SignInThrottle(limit=10, window_s=60, clock=lambda: now[0])
    guesser = ("address:10.0.0.9", "prefix:llk_guess")
    for attempt in range(10):
        assert throttle.retry_after(guesser) is None, attempt
        throttle.failed(guesser)
        now[0] += 1
    assert throttle.retry_after(guesser) == 50  # until the first failure is a minute old
    assert throttle.retry_after(("address:127.0.0.2", "prefix:llk_right")) is None
    assert throttle.retry_after(("address:127.0.0.3", "prefix:llk_guess")) == 50
    now[0] += 50
    assert throttle.retry_after(guesser) is None
