"""The operator console in a real headless Chromium, against real servers.

On SQLite (the session's vLLM server) and on PostgreSQL (two reference-engine replicas on one
database): an operator signs in, reads the adapters, promotes and rolls back with the
buttons, and a page gone stale is refused with the registry's conflict. A tenant key sees its
own adapters only, and no action; a change without the CSRF token is refused; markup in
user-supplied text stays text. The run saves the screenshots docs/console.md shows
(docs/console/).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from loraloop.adapters.tenants import key_prefix
from loraloop.serve.cli.client import AdminApiError, AdminClient

from ..conftest import ADMIN_HEADERS, ADMIN_KEY, ENGINE_ARGS, start_server
from ..support import BACKENDS, ServerProcess, fresh_postgres_database, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "console"
WAIT_S = 15
USAGE_WAIT_S = 20  # servers add their usage counts to the registry every 5 s
TENANT = "umbrella"
OTHER_TENANT = "wayne"
OPERATOR = "alice"
# Three versions, each trained from the one before, with gate figures that improve.
VERSION_SOURCES = ("acme/support", "acme/sales", "acme/legal")
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 1">'


# -- a browser and servers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "Debian's chromium and chromium-driver are missing: `make install-test` "
            "installs them (apt-get install -y chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def replicas(demo_model, tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one PostgreSQL registry and one weight store, as in Kubernetes."""
    data, logs = tmp_path_factory.mktemp("console-data"), tmp_path_factory.mktemp("logs")
    with fresh_postgres_database() as url:
        servers = [
            start_server(
                [
                    "--model",
                    str(demo_model),
                    "--engine",
                    "reference",
                    *ENGINE_ARGS,
                    "--database-url",
                    url,
                ],
                logs / f"console-replica-{n}.log",
                data,
            )
            for n in (1, 2)
        ]
        try:
            for server in servers:
                server.wait_ready()
            with AdminClient(servers[0].url, ADMIN_KEY, actor="tests") as admin:
                ensure_tenant(admin, TENANT)
            yield tuple(servers)
        finally:
            for server in servers:
                server.stop()


def ensure_tenant(admin: AdminClient, name: str) -> None:
    try:
        admin.create_tenant(name)
    except AdminApiError as exists:
        assert exists.status == 409


@pytest.fixture(scope="module", params=BACKENDS)
def server(request) -> ServerProcess:
    """The session server (SQLite registry), or a replica on a PostgreSQL registry; each
    with the console tests' tenant, and another tenant's adapter beside it."""
    server = (
        request.getfixturevalue("vllm_server")
        if request.param == "sqlite"
        else request.getfixturevalue("replicas")[0]
    )
    with AdminClient(server.url, ADMIN_KEY, actor="tests") as admin:
        for tenant in (TENANT, OTHER_TENANT):
            ensure_tenant(admin, tenant)
        admin.create_adapter(f"{OTHER_TENANT}/private")
    return server


@pytest.fixture(scope="module")
def tenant_key(server) -> str:
    with AdminClient(server.url, ADMIN_KEY, actor="tests") as admin:
        return admin.issue_key(TENANT, label="console")["key"]


@pytest.fixture
def admin(server) -> Iterator[AdminClient]:
    with AdminClient(server.url, ADMIN_KEY, actor="tests") as client:
        yield client


def make_adapter(
    admin: AdminClient,
    adapter_id: str,
    adapter_dirs: dict[str, Path],
    description: str | None = None,
) -> str:
    """`adapter_id` with three versions in a line of descent, version 1 live."""
    admin.create_adapter(adapter_id, description=description)
    for number, source in enumerate(VERSION_SOURCES, 1):
        admin.register(
            adapter_id,
            adapter_dirs[source],
            parent_version=number - 1 or None,
            source="trainer" if number > 1 else "upload",
            metrics={
                "win_rate": round(0.48 + 0.07 * number, 2),
                "kl_from_base": round(0.02 * number, 3),
            },
            tags={"dataset": f"week-{number}"},
            reason=f"version {number}",
        )
    admin.promote(adapter_id, 1, expected_live=0, reason="first release")
    return adapter_id


# -- what the tests do in the page --------------------------------------------------------


def wait(browser: WebDriver, condition, what: str):
    try:
        return WebDriverWait(browser, WAIT_S).until(lambda _: condition())
    except TimeoutException:
        page = browser.find_element(By.TAG_NAME, "body").text[:2000]
        logs = [entry["message"] for entry in browser.get_log("browser")]
        raise AssertionError(
            f"timed out waiting for {what} at {browser.current_url}; the page "
            f"says:\n{page}\nits console:\n" + "\n".join(logs)
        ) from None


def sign_in(browser: WebDriver, server: ServerProcess, key: str, name: str | None = None):
    browser.get(f"{server.url}/console")
    browser.delete_all_cookies()
    browser.get(f"{server.url}/console")
    wait(browser, lambda: browser.find_elements(By.ID, "sign-in"), "the sign-in form")
    browser.find_element(By.NAME, "key").send_keys(key)
    if name:
        browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    wait(browser, lambda: browser.find_element(By.ID, "nav").is_displayed(), "signed in")


def open_page(browser: WebDriver, server: ServerProcess, fragment: str, ready: str):
    browser.get(f"{server.url}/console#{fragment}")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ready), ready)


def open_adapter(browser: WebDriver, server: ServerProcess, adapter_id: str) -> None:
    open_page(browser, server, f"/adapters/{adapter_id}", "table.versions")


def click_version_action(browser: WebDriver, version: int, action: str) -> None:
    browser.find_element(
        By.CSS_SELECTOR, f'tr[data-version="{version}"] button[data-action="{action}"]'
    ).click()


def confirm(browser: WebDriver, reason: str) -> None:
    wait(
        browser,
        lambda: browser.find_elements(By.CSS_SELECTOR, "dialog#confirm[open]"),
        "the confirmation dialog",
    )
    browser.find_element(By.CSS_SELECTOR, "dialog#confirm textarea[name=reason]").send_keys(reason)
    browser.find_element(By.ID, "confirm-button").click()


def notice(browser: WebDriver, kind: str, phrase: str) -> str:
    """The notice's text, once it is of `kind` (ok, error) and says `phrase`."""
    element = browser.find_element(By.ID, "notice")
    wait(
        browser,
        lambda: (
            element.is_displayed()
            and kind in element.get_attribute("class")
            and phrase in element.text
        ),
        f"an {kind} notice saying {phrase!r}",
    )
    return element.text


def fetch(browser: WebDriver, method: str, path: str, headers: dict | None = None) -> dict:
    """A request from inside the page, as a script there would send it."""
    return browser.execute_async_script(
        """
        const [method, path, headers, done] = arguments;
        fetch(path, {method, headers, credentials: "same-origin",
                     body: method === "GET" ? undefined : JSON.stringify({version: 1})})
          .then(async (r) => done({status: r.status, body: await r.json().catch(() => null)}));
    """,
        method,
        path,
        headers or {},
    )


def chat(server: ServerProcess, model: str, max_tokens: int = 8) -> None:
    httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=ADMIN_HEADERS,
        timeout=60,
        json={
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "where is my order"}],
        },
    ).raise_for_status()


# -- the tests ----------------------------------------------------------------------------


def test_sign_in_and_see_the_adapters(browser, server, admin, adapter_dirs):
    adapter_id = make_adapter(admin, f"{TENANT}/overview", adapter_dirs, "answers the help desk")
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    row = f'tr[data-adapter="{adapter_id}"]'
    open_page(browser, server, "/", row)
    cells = browser.find_element(By.CSS_SELECTOR, row).text
    assert "answers the help desk" in cells and "v1" in cells
    listed = {a["id"] for a in admin.list_adapters()}
    shown = {
        e.get_attribute("data-adapter")
        for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-adapter]")
    }
    assert shown == listed
    session = next(c for c in browser.get_cookies() if c["name"] == "loraloop_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""


def test_promote_and_roll_back_with_the_buttons(browser, server, admin, adapter_dirs):
    adapter_id = make_adapter(admin, f"{TENANT}/buttons", adapter_dirs)
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    open_adapter(browser, server, adapter_id)
    click_version_action(browser, 2, "promote")
    confirm(browser, "better win rate")
    notice(browser, "ok", "v2 of umbrella/buttons is live")
    assert admin.show_adapter(adapter_id)["live_version"] == 2
    promoted = admin.history(adapter_id)[-1]
    assert (promoted["kind"], promoted["actor"], promoted["reason"], promoted["to_version"]) == (
        "promote",
        f"console:{OPERATOR}",
        "better win rate",
        2,
    )
    wait(
        browser,
        lambda: browser.find_element(By.ID, "live-version").text == "v2",
        "the page showing v2 live",
    )

    browser.find_element(By.CSS_SELECTOR, 'button[data-action="rollback"]').click()
    confirm(browser, "complaints about tone")
    notice(browser, "ok", "was rolled back")
    assert admin.show_adapter(adapter_id)["live_version"] == 1
    rolled = admin.history(adapter_id)[-1]
    assert (rolled["kind"], rolled["actor"], rolled["reason"]) == (
        "rollback",
        f"console:{OPERATOR}",
        "complaints about tone",
    )


def test_a_stale_pages_promote_is_refused_with_the_conflict(browser, server, admin, adapter_dirs):
    adapter_id = make_adapter(admin, f"{TENANT}/stale", adapter_dirs)
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    open_adapter(browser, server, adapter_id)  # shows version 1 live
    admin.promote(adapter_id, 2, reason="someone else, meanwhile")
    click_version_action(browser, 3, "promote")
    confirm(browser, "decided on what the page showed")
    assert "is 2, not 1" in notice(browser, "error", "re-read it")
    assert admin.show_adapter(adapter_id)["live_version"] == 2


def test_a_change_without_the_csrf_token_is_refused(browser, server, admin, adapter_dirs):
    adapter_id = make_adapter(admin, f"{TENANT}/csrf", adapter_dirs)
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    open_adapter(browser, server, adapter_id)
    promote = f"/admin/v1/adapters/{adapter_id}/promote"
    refused = fetch(browser, "POST", promote, {"Content-Type": "application/json"})
    assert refused["status"] == 403
    assert refused["body"]["error"]["code"] == "csrf_token_invalid"
    forged = fetch(
        browser, "POST", promote, {"Content-Type": "application/json", "X-CSRF-Token": "forged"}
    )
    assert forged["status"] == 403
    assert fetch(browser, "GET", f"/admin/v1/adapters/{adapter_id}")["status"] == 200
    # The CLI's requests carry the key, not the cookie: no token needed.
    assert (
        httpx.post(f"{server.url}{promote}", json={"version": 1}, headers=ADMIN_HEADERS).status_code
        == 200
    )
    assert [e["kind"] for e in admin.history(adapter_id)].count("promote") == 1


def test_a_tenant_key_sees_only_its_own_adapters_and_no_actions(
    browser, server, admin, tenant_key, adapter_dirs
):
    own = make_adapter(admin, f"{TENANT}/readonly", adapter_dirs)
    sign_in(browser, server, tenant_key)
    open_page(browser, server, "/", "tr[data-adapter]")
    shown = {
        e.get_attribute("data-adapter")
        for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-adapter]")
    }
    assert own in shown and all(a.startswith(f"{TENANT}/") for a in shown)
    assert not browser.find_element(By.ID, "nav-tenants").is_displayed()
    open_adapter(browser, server, own)
    assert browser.find_elements(By.CSS_SELECTOR, "main button") == []
    assert "read-only" in browser.find_element(By.ID, "who").text
    # Another tenant's adapter looks exactly like one that does not exist.
    foreign = fetch(browser, "GET", f"/admin/v1/adapters/{OTHER_TENANT}/private")
    missing = fetch(browser, "GET", f"/admin/v1/adapters/{OTHER_TENANT}/missing")
    assert foreign["status"] == missing["status"] == 404
    assert foreign["body"]["error"]["message"].replace("private", "X") == (
        missing["body"]["error"]["message"].replace("missing", "X")
    )
    listed = fetch(browser, "GET", f"/admin/v1/adapters?tenant={OTHER_TENANT}")
    assert (listed["status"], listed["body"]) == (200, [])
    token = fetch(browser, "GET", "/console/session")["body"]["csrf_token"]
    for method, path in (
        ("GET", "/admin/v1/tenants"),
        ("GET", f"/admin/v1/adapters/{own}/policy"),
        ("POST", f"/admin/v1/adapters/{own}/promote"),
    ):
        refused = fetch(
            browser, method, path, {"X-CSRF-Token": token, "Content-Type": "application/json"}
        )
        assert (refused["status"], refused["body"]["error"]["code"]) == (403, "forbidden"), path
    # Revoking the key ends the sessions signed in with it, at once.
    admin.revoke_key(TENANT, key_prefix(tenant_key), reason="rotated")
    assert fetch(browser, "GET", f"/admin/v1/adapters/{own}")["status"] == 401


def test_markup_in_user_text_is_shown_as_text_and_runs_nothing(
    browser, server, admin, adapter_dirs
):
    adapter_id = make_adapter(admin, f"{TENANT}/hostile", adapter_dirs, description=HOSTILE)
    admin.register(adapter_id, adapter_dirs["globex/chat"], tags={"note": HOSTILE}, reason=HOSTILE)
    admin.promote(adapter_id, 2, reason=HOSTILE)
    sign_in(browser, server, ADMIN_KEY)
    for fragment, ready in (
        ("/", f'tr[data-adapter="{adapter_id}"]'),
        (f"/adapters/{adapter_id}", "table.versions"),
    ):
        open_page(browser, server, fragment, ready)
        main = browser.find_element(By.TAG_NAME, "main")
        assert HOSTILE in main.text
        assert main.find_elements(By.TAG_NAME, "img") == []
        assert main.find_elements(By.TAG_NAME, "script") == []
        assert browser.execute_script("return window.__pwned") is None


def test_console_responses_carry_a_strict_content_security_policy(server):
    for path in ("/console", "/console/static/app.js"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy


def test_a_change_through_one_replica_shows_on_the_other(browser, replicas, adapter_dirs):
    first, second = replicas
    with AdminClient(first.url, ADMIN_KEY, actor="tests") as admin:
        adapter_id = make_adapter(admin, f"{TENANT}/replicated", adapter_dirs)
    sign_in(browser, first, ADMIN_KEY, OPERATOR)
    open_adapter(browser, first, adapter_id)
    click_version_action(browser, 3, "promote")
    confirm(browser, "through the first replica")
    notice(browser, "ok", "is live")
    # The same session cookie works on the other replica: no session store is shared.
    open_adapter(browser, second, adapter_id)
    wait(
        browser,
        lambda: browser.find_element(By.ID, "live-version").text == "v3",
        "the second replica showing v3 live",
    )
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="rollback"]').click()
    confirm(browser, "through the second replica")
    notice(browser, "ok", "was rolled back")
    with AdminClient(first.url, ADMIN_KEY) as admin:
        assert admin.show_adapter(adapter_id)["live_version"] == 1


def test_canary_retire_reject_and_a_training_run_from_the_page(browser, replicas, adapter_dirs):
    server = replicas[0]
    with AdminClient(server.url, ADMIN_KEY) as admin:
        adapter_id = make_adapter(admin, f"{TENANT}/actions", adapter_dirs)
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    open_adapter(browser, server, adapter_id)
    click_version_action(browser, 3, "canary")
    percent = wait(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, "dialog input[name=percent]"),
        "percent",
    )
    percent.clear()
    percent.send_keys("25")
    confirm(browser, "v3 on a quarter of the traffic")
    notice(browser, "ok", "is the canary")
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="clear-canary"]').click()
    confirm(browser, "enough evidence")
    notice(browser, "ok", "was cleared")
    click_version_action(browser, 3, "retire")
    confirm(browser, "superseded")
    notice(browser, "ok", "retired")
    click_version_action(browser, 2, "reject")
    confirm(browser, "answers too curt")
    notice(browser, "ok", "rejected")
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="train"]').click()
    confirm(browser, "a week of new feedback")
    notice(browser, "ok", "is queued")
    wait(
        browser,
        lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-run].queued"),
        "the queued run on the page",
    )
    with AdminClient(server.url, ADMIN_KEY) as admin:
        assert [(v["version"], v["status"]) for v in admin.list_versions(adapter_id)] == [
            (1, "live"),
            (2, "rejected"),
            (3, "retired"),
        ]
        assert admin.runs(adapter_id)[0]["requested_by"] == f"console:{OPERATOR}"
        changes = [(e["kind"], e["actor"], e["reason"]) for e in admin.history(adapter_id)[-5:]]
    assert changes == [
        (kind, f"console:{OPERATOR}", reason)
        for kind, reason in (
            ("canary_set", "v3 on a quarter of the traffic"),
            ("canary_cleared", "enough evidence"),
            ("retire", "superseded"),
            ("reject", "answers too curt"),
            ("training_queued", "a week of new feedback"),
        )
    ]


def test_tenants_and_keys_from_the_page(browser, replicas):
    server = replicas[1]
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    open_page(browser, server, "/tenants", "form#new-tenant")
    browser.find_element(By.CSS_SELECTOR, "#new-tenant input[name=tenant]").send_keys("hooli")
    browser.find_element(By.CSS_SELECTOR, "#new-tenant button").click()
    notice(browser, "ok", "hooli created")
    form = wait(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, 'form[data-tenant="hooli"]'),
        "its form",
    )
    form.find_element(By.NAME, "label").send_keys("support team")
    form.find_element(By.TAG_NAME, "button").click()
    key = wait(
        browser, lambda: browser.find_element(By.CSS_SELECTOR, "#issued-key code"), "the new key"
    ).text
    models = f"{server.url}/v1/models"
    assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    row = f'tr[data-prefix="{key_prefix(key)}"]'
    browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="revoke"]').click()
    confirm(browser, "the team left")
    notice(browser, "ok", "is revoked")
    assert browser.find_elements(By.ID, "issued-key") == []  # shown once, then never again
    assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_usage_and_feedback_from_every_replica_add_up(browser, replicas, adapter_dirs):
    first, second = replicas
    with AdminClient(first.url, ADMIN_KEY, actor="tests") as admin:
        adapter_id = make_adapter(admin, f"{TENANT}/counted", adapter_dirs)
    for server, requests in ((first, 2), (second, 3)):
        wait_until(
            lambda server=server: (
                adapter_id
                in {
                    m["id"]
                    for m in httpx.get(f"{server.url}/v1/models", headers=ADMIN_HEADERS).json()[
                        "data"
                    ]
                }
            ),
            WAIT_S,
            f"{adapter_id} served at {server.url}",
        )
        for _ in range(requests):
            chat(server, adapter_id, max_tokens=4)
    usage_url = f"{second.url}/admin/v1/adapters/{adapter_id}/usage"
    wait_until(
        lambda: sum(u["requests"] for u in httpx.get(usage_url, headers=ADMIN_HEADERS).json()) == 5,
        USAGE_WAIT_S,
        "both replicas' counts",
    )
    (counted,) = httpx.get(usage_url, headers=ADMIN_HEADERS).json()
    assert counted["version"] == 1 and 5 <= counted["completion_tokens"] <= 20
    for server in replicas:
        httpx.post(
            f"{server.url}/v1/feedback",
            headers=ADMIN_HEADERS,
            json={
                "adapter": adapter_id,
                "prompt": "where is my order",
                "chosen": "on its way",
                "rejected": "no idea",
            },
        ).raise_for_status()
    feedback = httpx.get(
        f"{first.url}/admin/v1/adapters/{adapter_id}/feedback-activity", headers=ADMIN_HEADERS
    ).json()
    assert feedback["pending"] == 2 and [h["count"] for h in feedback["per_hour"]] == [2]
    sign_in(browser, second, ADMIN_KEY)
    open_page(browser, second, "/", f'tr[data-adapter="{adapter_id}"]')
    cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-adapter="{adapter_id}"] .requests')
    assert cell.text == "5"


def test_screenshots_of_the_overview_and_an_adapter_page(browser, vllm_server, adapter_dirs):
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="tests") as admin:
        ensure_tenant(admin, TENANT)
        adapter_id = make_adapter(
            admin, f"{TENANT}/assistant", adapter_dirs, "Answers customers in the help-desk widget."
        )
        admin.promote(adapter_id, 2, expected_live=1, reason="win rate up 7 points")
        admin.set_canary(adapter_id, 3, 10, reason="try the week-3 data on 10%")
    for number in range(6):
        httpx.post(
            f"{vllm_server.url}/v1/feedback",
            headers=ADMIN_HEADERS,
            json={
                "adapter": adapter_id,
                "prompt": f"question {number}",
                "chosen": "a kind answer",
                "rejected": "a curt answer",
            },
        ).raise_for_status()
    for model in ("@1", "", "", "", "@3", ""):
        chat(vllm_server, adapter_id + model)
    wait_until(
        lambda: httpx.get(
            f"{vllm_server.url}/admin/v1/adapters/{adapter_id}/usage", headers=ADMIN_HEADERS
        ).json(),
        USAGE_WAIT_S,
        "usage counts",
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sign_in(browser, vllm_server, ADMIN_KEY, OPERATOR)
    browser.set_window_size(1280, 1200)
    try:
        open_page(browser, vllm_server, "/", f'tr[data-adapter="{adapter_id}"]')
        browser.save_screenshot(str(SCREENSHOTS / "overview.png"))
        browser.set_window_size(1280, 1700)
        open_adapter(browser, vllm_server, adapter_id)
        wait(
            browser,
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 4,
            "four charts",
        )
        browser.save_screenshot(str(SCREENSHOTS / "adapter.png"))
    finally:
        browser.set_window_size(1280, 900)
    assert all(
        (SCREENSHOTS / name).stat().st_size > 10_000 for name in ("overview.png", "adapter.png")
    )


def test_sign_out_ends_the_session(browser, replicas):
    server = replicas[0]
    sign_in(browser, server, ADMIN_KEY)
    browser.find_element(By.ID, "sign-out").click()
    wait(browser, lambda: browser.find_elements(By.ID, "sign-in"), "the sign-in form")
    assert fetch(browser, "GET", "/admin/v1/adapters")["status"] == 401


def test_each_tag_is_isolated_and_a_long_word_wraps(browser, server, admin, adapter_dirs, tmp_path):
    """An unclosed right-to-left override in one tag must not reverse the next tag, and a
    1,000-character word must not widen the page."""
    adapter_id = make_adapter(admin, f"{TENANT}/bidi", adapter_dirs, description="d" * 1000)
    admin.register(
        adapter_id,
        adapter_dirs["globex/chat"],
        reason="\u202eesaeler",
        tags={"a": "\u202eexe.tnemyap", "b": "payment", "word": "w" * 250},
    )
    sign_in(browser, server, ADMIN_KEY)
    open_adapter(browser, server, adapter_id)
    cell = browser.find_element(By.CSS_SELECTOR, 'tr[data-version="4"] td:has(bdi)')
    isolated = cell.find_elements(By.TAG_NAME, "bdi")
    assert [b.get_attribute("textContent") for b in isolated] == [
        "a=\u202eexe.tnemyap",
        "b=payment",
        f"word={'w' * 250}",
    ]
    assert {
        browser.execute_script("return getComputedStyle(arguments[0]).unicodeBidi", b)
        for b in isolated
    } == {"isolate"}
    browser.save_screenshot(str(tmp_path / "isolated-tags.png"))
    assert (tmp_path / "isolated-tags.png").stat().st_size > 10_000
    for fragment, ready in (
        ("/", f'tr[data-adapter="{adapter_id}"]'),
        (f"/adapters/{adapter_id}", "table.versions"),
    ):
        open_page(browser, server, fragment, ready)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= browser.execute_script("return window.innerWidth") + 20, (fragment, width)


def test_back_after_leaving_does_not_show_a_newly_issued_key(browser, replicas):
    server = replicas[0]
    sign_in(browser, server, ADMIN_KEY, OPERATOR)
    with AdminClient(server.url, ADMIN_KEY, actor="tests") as admin:
        ensure_tenant(admin, "initech")
    open_page(browser, server, "/tenants", 'form[data-tenant="initech"]')
    browser.find_element(By.CSS_SELECTOR, 'form[data-tenant="initech"] button').click()
    key = wait(
        browser, lambda: browser.find_element(By.CSS_SELECTOR, "#issued-key code"), "the new key"
    ).text
    browser.get("data:text/html,<p id=elsewhere>another site</p>")
    wait(browser, lambda: browser.find_elements(By.ID, "elsewhere"), "the other site")
    browser.back()
    wait(
        browser,
        lambda: browser.find_elements(By.ID, "nav") or browser.find_elements(By.ID, "sign-in"),
        "the console again",
    )
    assert key not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.ID, "issued-key") == []
