"""The run store's two database backends: the standard library's sqlite3, and SQLAlchemy for any URL.

Both give the store the same three calls: `transaction()` (a write transaction yielding an
`execute(sql, params)` callable; `BEGIN IMMEDIATE` on SQLite), `query(sql, params)` (rows as
dicts) and `close()`. SQLite files are put in WAL mode with a busy timeout, so several processes
can open and write one store at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

BUSY_TIMEOUT_S = 60.0


def _switch_to_wal(conn: Any, busy_error: type[Exception]) -> None:
    """Put an SQLite file in WAL mode, waiting out other processes that are opening it too.

    WAL is a property of the file, so a file already in WAL needs no lock at all. Converting one
    needs exclusive access and SQLite does not call the busy handler for it: two processes creating
    the same store at once would see "database is locked" at once. Retry with backoff for up to the
    busy timeout, and stop as soon as the file is in WAL (whoever converted it).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL").fetchone()  # an in-memory file stays "memory"
            return
        except busy_error as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise busy_error(f"database is locked: could not switch to WAL in {BUSY_TIMEOUT_S:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Sqlite:
    """stdlib sqlite3: autocommit connection, explicit BEGIN IMMEDIATE for writes, WAL, busy timeout."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _switch_to_wal(self.conn, sqlite3.OperationalError)
        self.conn.execute("PRAGMA synchronous = NORMAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda sql, params=None: self.conn.execute(sql, params or {})
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(sql, params or {}).fetchall()]

    def close(self) -> None:
        self.conn.close()


class SqlAlchemy:
    """Any database SQLAlchemy can reach; SQLite URLs get the same WAL/busy/immediate settings."""

    def __init__(self, url: str) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise ModelscaleError(
                f"the run store URL {url!r} needs SQLAlchemy (pip install sqlalchemy); or give a plain "
                "file path for the built-in SQLite store"
            ) from None
        self.sa = sa
        sqlite = url.startswith("sqlite")
        try:
            self.engine = sa.create_engine(
                url, connect_args={"timeout": BUSY_TIMEOUT_S} if sqlite else {}, pool_pre_ping=not sqlite
            )
        except Exception as exc:  # noqa: BLE001 - bad URL or missing driver, one line
            raise ModelscaleError(f"cannot open run store {url!r}: {exc}") from None
        if sqlite:
            db = self.engine.url.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)

            @sa.event.listens_for(self.engine, "connect")
            def _connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                cur.close()
                import sqlite3

                _switch_to_wal(dbapi_conn, sqlite3.OperationalError)

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.engine.begin() as conn:
            yield lambda sql, params=None: conn.execute(self.sa.text(sql), params or {})

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(self.sa.text(sql), params or {}).mappings().all()]

    def close(self) -> None:
        self.engine.dispose()
