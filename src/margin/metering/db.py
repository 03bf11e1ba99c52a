"""One small database handle over SQLite and PostgreSQL.

SQL is written once with ``?`` placeholders and portable types (TEXT, BIGINT, INTEGER,
DOUBLE PRECISION); the PostgreSQL handle rewrites the placeholders for psycopg.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from margin.errors import ConfigError


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _pg_sql(sql: str) -> str:
    # Our SQL never contains a literal '?' or '%', so a plain rewrite is safe.
    return sql.replace("?", "%s")


@dataclass
class Database:
    url: str
    conn: Any
    dialect: str  # "sqlite" | "postgresql"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.dialect == "postgresql":
            cur = self.conn.cursor()
            cur.execute(_pg_sql(sql), params)
            return cur
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.dialect == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self.execute(sql, params)
        rows = cur.fetchall()
        return [tuple(r) for r in rows]

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # the connection may already be gone; nothing to undo then
            pass

    def close(self) -> None:
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


def connect(url: str, *, connect_timeout_s: float = 5.0, read_only: bool = False) -> Database:
    """Open ``url``: a ``postgresql://`` URL or a SQLite file path (``sqlite:///path`` too).

    ``read_only`` opens a SQLite file as it is: nothing created, no journal mode changed
    (a reader must not turn someone's ledger copy into a WAL database)."""
    if is_postgres(url):
        import psycopg

        # A database that stops answering (a dead host, a cut network) must fail the write,
        # not hang the writer thread: TCP keepalives and a send timeout bound the wait.
        conn = psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s)),
                               keepalives=1, keepalives_idle=5, keepalives_interval=2,
                               keepalives_count=2, tcp_user_timeout=10_000)
        return Database(url, conn, "postgresql")
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    if "://" in path:
        raise ConfigError(f"unsupported database URL {url!r}: use a file path or postgresql://")
    if read_only:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                               timeout=connect_timeout_s, check_same_thread=False)
        return Database(url, conn, "sqlite")
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=connect_timeout_s, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(connect_timeout_s * 1000)}")
    return Database(url, conn, "sqlite")
