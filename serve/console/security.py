"""Headers on every console response: the page may run only its own files, from this server,
and nothing of it is stored by the browser.

No inline script or style is allowed (the page has none), nothing is loaded from another
origin, and no other site may frame the console. Data reaches the page as JSON from the
admin API and is written into it as text only, never as markup.
"""

from __future__ import annotations

CONSOLE_PATH = "/console"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # Never stored: the session routes carry its CSRF token, and Back after leaving the
    # console must not show a page (a newly issued key) from the browser's cache; a new
    # server version's page never runs with a stale module either.
    (b"cache-control", b"no-store"),
]


class ConsoleHeaders:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(CONSOLE_PATH):
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
