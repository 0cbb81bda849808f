"""Connections to the registry database: SQLite (embedded default) or PostgreSQL (scale-out).

One code path for both. Every write is one transaction that starts by incrementing the
registry revision, which serializes writers on either backend (SQLite: `BEGIN IMMEDIATE`
takes the write lock up front; PostgreSQL: the revision row stays locked until commit).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

from .errors import RegistryUnavailable
from .schema import RegistryRevision

_READ_ONLY = "loraloop_read_only"
_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: PostgreSQL advisory lock that keeps replicas starting together from
# running the same migration twice.
_MIGRATION_LOCK_KEY = 0x6C6F7261
# Bounds on waiting for the database, so a request fails with RegistryUnavailable instead of
# hanging: a new PostgreSQL connection (an unreachable host would take the OS's minutes),
# a connection from the pool, and SQLite's wait for another process's write lock.
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_MS = 30_000


@contextmanager
def _unavailable_as_registry_error() -> Iterator[None]:
    """Connection loss, refusal and lock timeouts as the one error callers can act on.
    Errors of the statements themselves (constraints, bad SQL) pass through unchanged."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise RegistryUnavailable() from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise RegistryUnavailable() from exc
        raise


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'registry.db'}"


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Leave transaction control to the "begin" hook below, not to the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Writers take the lock at BEGIN: two deferred transactions that both read and then
        # write would otherwise deadlock and one would fail with "database is locked".
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = create_engine(
            url,
            pool_pre_ping=not self.is_sqlite,
            **(
                {}
                if self.is_sqlite
                else {
                    "pool_timeout": POOL_TIMEOUT_S,
                    "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
                }
            ),
        )
        if self.is_sqlite:
            _tune_sqlite(self.engine)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(
            self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
        )

    @contextmanager
    def transaction(self, *, routing_change: bool = True) -> Iterator[Session]:
        """One write transaction, committed on success. A routing change (anything servers
        route or authenticate by) increments the revision first; feedback and training
        bookkeeping do not, so that they never make every server reload its routes."""
        with _unavailable_as_registry_error(), self._writer.begin() as session:
            if routing_change:
                session.execute(
                    update(RegistryRevision).values(revision=RegistryRevision.revision + 1)
                )
            yield session

    @contextmanager
    def writing_rows(self) -> Iterator[Connection]:
        """A write transaction without the ORM, for many plain rows at once (feedback):
        the same locking and commit as `transaction`, less the per-transaction cost of a
        Session. It never changes routing, so the revision stays as it is."""
        with _unavailable_as_registry_error(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with _unavailable_as_registry_error(), self._reader.begin() as session:
            yield session

    def revision(self) -> int:
        with self.reading() as session:
            return session.scalar(select(RegistryRevision.revision)) or 0

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration (or to `revision`); safe to run from many
        processes at once."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as connection:
            if not self.is_sqlite:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def rows_changed(session: Session, statement: UpdateBase) -> int:
    """Run an UPDATE or DELETE; the number of rows it matched."""
    result = session.execute(statement)
    # Typed as any Result; for these statements it is the cursor's, which counts the rows.
    assert isinstance(result, CursorResult)
    return result.rowcount
