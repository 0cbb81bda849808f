"""Real databases for registry tests: a SQLite file, or a fresh PostgreSQL database per test.

PostgreSQL comes from LORALOOP_TEST_POSTGRES_URL (default: the local server, as `make test`
ensures). An unreachable server fails the tests loudly: the PostgreSQL backend is part of
the product, so its tests are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from loraloop.adapters.db import sqlite_url

POSTGRES_URL = os.environ.get(
    "LORALOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    name = f"loraloop_test_{uuid.uuid4().hex[:12]}"
    server = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_URL}: start it, or point "
            "LORALOOP_TEST_POSTGRES_URL at one (`make test` starts the local one)"
        ) from exc
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield sqlite_url(directory)
    else:
        with fresh_postgres_database() as url:
            yield url
