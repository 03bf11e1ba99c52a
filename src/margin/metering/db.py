"""One small database handle over SQLite and PostgreSQL.

SQL is written once with ``?`` placeholders and portable types (TEXT, BIGINT, INTEGER,
DOUBLE PRECISION); the PostgreSQL handle rewrites the placeholders for psycopg.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from margin.errors import ConfigError


class DeadlineExceeded(TimeoutError):
    """A database call ran past its deadline and was broken off by the watchdog."""


class Watchdog:
    """Breaks a call that runs past its deadline, from a thread of its own.

    A server-side ``statement_timeout`` does not help when the server (or the network in
    between) stops answering: the client waits in ``recv()`` for an answer that never
    comes, and TCP keepalives only notice a dead peer, not a silent live one. The watchdog
    runs ``breaker`` (shut the socket down, interrupt SQLite) so the blocked call fails at
    once and the caller can move on."""

    def __init__(self, timeout_s: float, breaker: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._breaker = breaker
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._fired = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Watchdog":
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="margin-db-watchdog",
                                                daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + self.timeout_s
            self._fired = False
            self._cond.notify()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with self._cond:
            self._deadline = None
            fired = self._fired
            self._cond.notify()
        if fired:
            raise DeadlineExceeded(f"database call took over {self.timeout_s:g} s") from exc

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._deadline = None
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                self._fired = True
            try:
                self._breaker()
            except Exception:  # the connection may be gone already: nothing left to break
                pass


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _pg_sql(sql: str) -> str:
    # Our SQL never contains a literal '?' or '%', so a plain rewrite is safe.
    return sql.replace("?", "%s")


def _null_guard() -> Any:
    import contextlib

    return contextlib.nullcontext()


@dataclass
class Database:
    url: str
    conn: Any
    dialect: str  # "sqlite" | "postgresql"
    watchdog: Watchdog | None = field(default=None, repr=False)

    def _guard(self) -> Any:
        return self.watchdog if self.watchdog is not None else _null_guard()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._guard():
            if self.dialect == "postgresql":
                cur = self.conn.cursor()
                cur.execute(_pg_sql(sql), params)
                return cur
            return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._guard():
            if self.dialect == "postgresql":
                with self.conn.cursor() as cur:
                    cur.executemany(_pg_sql(sql), rows)
            else:
                self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False
              ) -> list[tuple]:
        """All rows of ``sql``. ``binary``: PostgreSQL sends the result in its binary
        format (floats are then copied, not parsed from text: a reader of thousands of
        rows spends half its time less); SQLite ignores it."""
        if binary and self.dialect == "postgresql":
            with self._guard(), self.conn.cursor(binary=True) as cur:
                cur.execute(_pg_sql(sql), params)
                return [tuple(r) for r in cur.fetchall()]
        cur = self.execute(sql, params)
        rows = cur.fetchall()
        return [tuple(r) for r in rows]

    def commit(self) -> None:
        with self._guard():
            self.conn.commit()

    def rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection may already be gone; nothing to undo then
            pass

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        try:
            self.conn.close()
        except Exception:
            pass

    def columns(self, table: str) -> dict[str, str]:
        """The table's columns and their types as this database reports them ({} when the
        table does not exist)."""
        if self.dialect == "postgresql":
            rows = self.query("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = ? AND table_schema = current_schema()",
                              (table,))
        else:
            rows = [(r[1], r[2]) for r in self.query(f"PRAGMA table_info({table})")]
        return {str(name): str(kind) for name, kind in rows}

    def lock_for_migrations(self) -> None:
        """Serialise concurrent migrators (several gateway replicas starting at once)."""
        if self.dialect == "postgresql":
            self.execute("SELECT pg_advisory_xact_lock(727465)")
        else:
            self.conn.execute("BEGIN IMMEDIATE")


def _shutdown_socket(conn: Any) -> None:
    # shutdown() acts on the socket, not on our duplicate descriptor: libpq's recv() on
    # the original returns at once and psycopg raises; the connection is then discarded.
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def _pg_options(url: str, statement_timeout_s: float) -> str:
    """The URL's own ``options`` (a search_path, say) plus the statement timeout."""
    from psycopg.conninfo import conninfo_to_dict

    own = str(conninfo_to_dict(url).get("options") or "")
    return f"{own} -c statement_timeout={max(1, int(statement_timeout_s * 1000))}".strip()


def connect(url: str, *, connect_timeout_s: float = 5.0, read_only: bool = False,
            call_timeout_s: float | None = None) -> Database:
    """Open ``url``: a ``postgresql://`` URL or a SQLite file path (``sqlite:///path`` too).

    ``call_timeout_s``: every call on the handle fails after this long, whatever the
    server does (a server-side statement timeout, a busy timeout for SQLite, and a
    watchdog that breaks the connection when the server does not answer at all).
    ``read_only`` opens a SQLite file as it is: nothing created, no journal mode changed
    (a reader must not turn someone's ledger copy into a WAL database)."""
    if is_postgres(url):
        import psycopg

        # A database that stops answering (a dead host, a cut network) must fail the write,
        # not hang the writer thread: TCP keepalives and a send timeout bound the wait.
        extra: dict[str, Any] = {}
        if call_timeout_s is not None:
            extra["options"] = _pg_options(url, call_timeout_s)
        conn = psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s)),
                               keepalives=1, keepalives_idle=5, keepalives_interval=2,
                               keepalives_count=2, tcp_user_timeout=10_000, **extra)
        db = Database(url, conn, "postgresql")
        if call_timeout_s is not None:
            # Past the server's own timeout, with room for its answer to arrive.
            db.watchdog = Watchdog(call_timeout_s + 1.0, lambda: _shutdown_socket(conn))
        return db
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    if "://" in path:
        raise ConfigError(f"unsupported database URL {url!r}: use a file path or postgresql://")
    if read_only:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                               timeout=connect_timeout_s, check_same_thread=False)
        return Database(url, conn, "sqlite")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    busy_s = connect_timeout_s if call_timeout_s is None else call_timeout_s
    conn = sqlite3.connect(path, timeout=busy_s, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    db = Database(url, conn, "sqlite")
    if call_timeout_s is not None:
        # The busy timeout covers a lock held by another writer; interrupt() covers a call
        # stuck anywhere else (a slow disk, a huge statement).
        db.watchdog = Watchdog(call_timeout_s + 1.0, conn.interrupt)
    return db
