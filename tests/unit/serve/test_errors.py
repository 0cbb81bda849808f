"""An unexpected error is a sanitized 500 that leaves the client's connection usable.

The app is the server's own error machinery (its handlers and ErrorBoundary) served by a real
uvicorn; only the failing route is a stand-in, since the server itself has no known way to
fail. Two requests go over one raw socket: if the server dropped the connection after the
500, the second would find it closed.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from loraloop.serve.errors import install_error_handlers
from loraloop.serve.middleware import ErrorBoundary

from ...support import free_port


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(ErrorBoundary)

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("a bug that must not reach the client: /secret/path")

    @app.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    return app


@pytest.fixture
def server_port():
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            failing_app(), host="127.0.0.1", port=port, log_config=None, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def exchange(sock: socket.socket, path: str) -> tuple[int, dict, dict]:
    """One HTTP/1.1 request on an open connection: (status, headers, JSON body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def test_a_500_keeps_the_connection_open(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        status, headers, body = exchange(sock, "/boom")
        assert status == 500
        assert headers.get("connection") != "close"
        assert body == {
            "error": {
                "message": "The server had an internal error.",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        }
        for _ in range(3):  # the same connection keeps working, after more errors too
            assert exchange(sock, "/ok")[:1] == (200,)
            assert exchange(sock, "/boom")[0] == 500
