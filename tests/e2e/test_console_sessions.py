"""Console sessions that really end, over HTTP as a browser (or a stolen cookie) sends them:
two replicas on one registry (SQLite, one data directory) with the reference engine, since
only the sessions matter here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loraloop.serve.cli.client import AdminClient
from loraloop.serve.sessions import CSRF_HEADER, SESSION_COOKIE

from ..conftest import ADMIN_KEY, ENGINE_ARGS, start_server
from ..support import ServerProcess

TENANT = "sessions"


def start(demo_model: Path, data: Path, log: Path, admin_key: str = ADMIN_KEY) -> ServerProcess:
    return start_server(
        ["--model", str(demo_model), "--engine", "reference", *ENGINE_ARGS],
        log,
        data,
        env={"LORALOOP_ADMIN_KEY": admin_key},
    ).wait_ready()


@pytest.fixture(scope="module")
def fleet(demo_model, tmp_path_factory) -> Iterator[dict]:
    data, logs = tmp_path_factory.mktemp("sessions-data"), tmp_path_factory.mktemp("logs")
    servers = {
        "one": start(demo_model, data, logs / "one.log"),
        "two": start(demo_model, data, logs / "two.log"),
        "data": data,
        "logs": logs,
        "model": demo_model,
    }
    try:
        with AdminClient(servers["one"].url, ADMIN_KEY, actor="tests") as admin:
            admin.create_tenant(TENANT)
        yield servers
    finally:
        for name in ("one", "two"):
            servers[name].stop()


def sign_in(
    server: ServerProcess, key: str, *, address: str = "127.0.0.1"
) -> tuple[httpx.Response, str | None, str | None]:
    """(response, cookie, csrf token), signing in from `address` on the loopback."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as browser:
        response = browser.post("/console/session", json={"key": key})
    token = response.json().get("csrf_token") if response.status_code == 200 else None
    return response, response.cookies.get(SESSION_COOKIE), token


def replay(server: ServerProcess, cookie: str, token: str) -> tuple[int, int]:
    """A read and a change with a session's cookie and token: their statuses."""
    with httpx.Client(
        base_url=server.url,
        cookies={SESSION_COOKIE: cookie},
        headers={CSRF_HEADER: token},
        timeout=30,
    ) as stolen:
        read = stolen.get("/admin/v1/adapters").status_code
        change = stolen.post("/admin/v1/tenants", json={"name": "replayed"}).status_code
    return read, change


def test_signed_out_cookies_are_refused_everywhere_and_restarts_keep_live_ones(fleet):
    one, two = fleet["one"], fleet["two"]
    _, kept, kept_token = sign_in(one, ADMIN_KEY)
    _, ended, ended_token = sign_in(one, ADMIN_KEY)
    assert kept != ended and kept_token != ended_token  # the same second, other sessions
    assert replay(two, ended, ended_token)[0] == 200  # any replica honours it
    with httpx.Client(base_url=one.url, cookies={SESSION_COOKIE: ended}) as browser:
        assert browser.delete("/console/session").status_code == 204
    assert replay(one, ended, ended_token) == (401, 401)
    assert replay(two, ended, ended_token) == (401, 401)

    one.stop()
    fleet["one"] = restarted = start(fleet["model"], fleet["data"], fleet["logs"] / "one-2.log")
    assert replay(restarted, kept, kept_token)[0] == 200
    assert replay(restarted, ended, ended_token) == (401, 401)


def test_changing_the_admin_credential_ends_the_admin_sessions(fleet):
    _, cookie, token = sign_in(fleet["one"], ADMIN_KEY)
    rotated = start(
        fleet["model"],
        fleet["data"],
        fleet["logs"] / "rotated.log",
        admin_key="a-new-admin-credential-0123456789",
    )
    try:
        assert replay(rotated, cookie, token) == (401, 401)
        _, fresh, fresh_token = sign_in(rotated, "a-new-admin-credential-0123456789")
        assert replay(rotated, fresh, fresh_token)[0] == 200
    finally:
        rotated.stop()


def test_an_admin_lists_and_revokes_sessions(fleet):
    one, two = fleet["one"], fleet["two"]
    _, cookie, token = sign_in(one, ADMIN_KEY, address="127.0.0.2")
    admin = httpx.Client(base_url=two.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with admin:
        listed = admin.get("/admin/v1/console-sessions", params={"subject": "admin"}).json()
        mine = next(s for s in listed if s["client"] == "127.0.0.2" and s["live"])
        assert "csrf_token" not in mine and "token_hash" not in mine
        revoked = admin.post(f"/admin/v1/console-sessions/{mine['id']}/revoke").json()
        assert revoked["live"] is False and revoked["revoked_by"] == "admin"
    assert replay(one, cookie, token) == (401, 401)


def test_the_eleventh_wrong_key_in_a_minute_is_throttled_and_the_right_key_still_signs_in(fleet):
    server = fleet["two"]
    with AdminClient(server.url, ADMIN_KEY, actor="tests") as admin:
        key = admin.issue_key(TENANT)["key"]
    statuses = [sign_in(server, f"llk_wrong{n:04d}", address="127.0.0.3")[0] for n in range(11)]
    assert [r.status_code for r in statuses[:10]] == [401] * 10
    throttled = statuses[10]
    assert throttled.status_code == 429, throttled.text
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert throttled.json()["error"]["code"] == "rate_limit_exceeded"
    assert sign_in(server, key, address="127.0.0.3")[0].status_code == 429  # that address waits
    right, cookie, _ = sign_in(server, key, address="127.0.0.4")
    assert right.status_code == 200 and cookie
    metrics = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).text
    assert 'loraloop_console_sign_ins_total{result="throttled"}' in metrics
    assert "llk_wrong" not in (fleet["logs"] / "two.log").read_text()  # guesses never logged


def test_responses_that_carry_secrets_are_never_stored(fleet):
    server = fleet["one"]
    signed_in, cookie, _ = sign_in(server, ADMIN_KEY)
    assert signed_in.headers["Cache-Control"] == "no-store"
    with httpx.Client(base_url=server.url, cookies={SESSION_COOKIE: cookie}) as browser:
        assert browser.get("/console/session").headers["Cache-Control"] == "no-store"
        assert browser.get("/console/").headers["Cache-Control"] == "no-store"
    issued = httpx.post(
        f"{server.url}/admin/v1/tenants/{TENANT}/keys",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert issued.status_code == 201 and issued.headers["Cache-Control"] == "no-store"
