"""The ledger: one row per request, written in batches by a background thread.

The request path only appends to an in-memory queue (``submit``); it never waits on the
database. When the database is down, locked or silent, rows go to an append-only spool
file (JSON lines) and are replayed once it answers again. No database call can hold the
writer longer than ``ledger.write_timeout_s`` (see ``db.connect``), and the queue is
bounded: past ``max_queue_rows`` the oldest rows are spilled to the spool. Inserts are idempotent on the
request id, so a replay after an unacknowledged commit cannot double-count.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from margin.config import LedgerConfig
from margin.metering import rollups, schema
from margin.metering.db import Database, connect, is_postgres
from margin.metering.journal import Journal, journal_dir
from margin.metering.migrations import migrate

log = logging.getLogger("margin.ledger")

# The table's columns, in INSERT order (metering/schema.py defines them).
COLUMNS: tuple[str, ...] = schema.NAMES


def _is_data_error(exc: Exception) -> bool:
    """A row the database refuses (as opposed to a database that is not there)."""
    import sqlite3

    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError)):
        return True
    try:
        import psycopg

        return isinstance(exc, (psycopg.IntegrityError, psycopg.DataError,
                                psycopg.ProgrammingError))
    except ImportError:
        return False


def default_spool_path(cfg: LedgerConfig) -> Path:
    if cfg.spool_path:
        return Path(cfg.spool_path)
    if is_postgres(cfg.url):
        return Path("margin-ledger.spool")
    return Path(cfg.url + ".spool")


@dataclass
class LedgerCounters:
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    failed_batches: int = 0
    queued: int = 0
    spilled: int = 0


class LedgerWriter:
    """Batched, off-the-hot-path writer with a spool for when the database is unavailable."""

    def __init__(self, cfg: LedgerConfig) -> None:
        self.cfg = cfg
        self.spool_path = default_spool_path(cfg)
        self.counters = LedgerCounters()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._db: Database | None = None
        self._sql = schema.insert_sql()
        self._copy_sql = f"COPY {schema.TABLE} ({', '.join(schema.NAMES)}) FROM STDIN"
        self._last_replay_try = 0.0
        self._spool_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="margin-ledger", daemon=True)
        self.db_healthy = False
        self.journal = Journal(journal_dir(cfg), cfg.journal_fsync) if cfg.journal else None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._ensure_db()
        if self.journal is not None:
            self.journal.open()
            self._replay_journal()
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush everything (to the database, else to the spool) and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        stuck = self._thread.is_alive()
        # Whatever the thread could not take (it died, or timed out) goes to the spool.
        rest = self._drain(len(self._queue))
        if rest:
            self._spool(rest)
        if self.journal is not None:
            if stuck:
                # The thread still holds a batch that is in neither the database nor the
                # spool: its journal segment stays, and the next start replays it.
                log.error("ledger writer did not finish within %.1f s; its last batch is "
                          "kept in the journal for the next start", timeout_s)
            else:
                self.journal.seal()
                self.journal.retire()
            self.journal.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- hot path ----------------------------------------------------------------
    def submit(self, row: dict[str, Any]) -> None:
        """Queue one row (and journal it first: one buffered write, no fsync by default)."""
        if self.journal is not None:
            self.journal.append(row, self._queue.append)
        else:
            self._queue.append(row)
        n = len(self._queue)
        if n >= self.cfg.batch_size:
            self._wake.set()
            if n > self.cfg.max_queue_rows:
                self._spill()

    def _spill(self) -> None:
        """The queue is full (the writer is behind or the database slow): its oldest rows
        go to the spool now, so memory stays bounded; they are replayed with the rest."""
        batch = self._drain(max(self.cfg.batch_size, len(self._queue) - self.cfg.max_queue_rows))
        if batch:
            self._spool(batch)
            self.counters.spilled += len(batch)

    # -- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        interval_s = self.cfg.flush_interval_ms / 1000
        while not self._stop.is_set():
            self._wake.wait(interval_s)
            self._wake.clear()
            self._flush_all()
            self._maybe_replay()
        self._flush_all()
        if self.db_healthy:  # a database that just failed is not retried on the way out
            self._maybe_replay(force=True)

    def _drain(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            try:
                out.append(self._queue.popleft())
            except IndexError:
                break
        return out

    def _flush_all(self) -> None:
        sealed = self.journal is not None and self.journal.seal()
        self._flush_queue()
        if sealed:
            assert self.journal is not None
            self.journal.retire()  # every row queued before the seal is in the db or spool

    def _replay_journal(self) -> None:
        """Rows that a dead process journaled but may not have written: into the database
        (idempotent on the id), else the spool, then the segment is deleted."""
        assert self.journal is not None
        for path, rows, bad in self.journal.orphans():
            if bad:
                with self._spool_lock, open(str(self.spool_path) + ".bad", "ab") as f:
                    f.write(b"".join(line + b"\n" for line in bad))
                log.error("%d unreadable lines in ledger journal %s; moved to %s.bad",
                          len(bad), path, self.spool_path)
            for start in range(0, len(rows), self.cfg.batch_size):
                batch = rows[start:start + self.cfg.batch_size]
                if self._spool_has_rows() or not self._write(batch):
                    self._spool(batch)
            self.journal.forget(path)
            self.counters.replayed += len(rows)
            if rows:
                log.info("replayed %d ledger rows from journal %s", len(rows), path.name)

    def _flush_queue(self) -> None:
        while self._queue:
            batch = self._drain(max(self.cfg.batch_size,
                                    min(len(self._queue), self.cfg.catch_up_batch_size)))
            if not batch:
                return
            if self.db_healthy and self._spool_has_rows():
                # Rows spilled while the database is up (a burst past max_queue_rows): the
                # spool is written first, then this batch goes straight in, instead of
                # every batch after a spill taking the spool's detour (fsync, re-read).
                self.replay_spool()
            if self._spool_has_rows() or not self._write(batch):
                # Keep order simple: while a spool exists, new rows join it and are
                # replayed together, so nothing overtakes what is waiting.
                self._spool(batch)

    def _ensure_db(self) -> bool:
        if self._db is not None:
            return True
        try:
            db = connect(self.cfg.url, connect_timeout_s=self.cfg.connect_timeout_s,
                         call_timeout_s=self.cfg.write_timeout_s)
            migrate(db)
        except Exception as exc:
            if self.db_healthy or self._db is None:
                log.warning("ledger database unavailable (%s); spooling to %s",
                            type(exc).__name__, self.spool_path)
            self.db_healthy = False
            return False
        self._db = db
        self.db_healthy = True
        return True

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        if not self._ensure_db():
            return False
        assert self._db is not None
        try:
            self._insert(rows)
            self._db.commit()
        except Exception as exc:
            self.counters.failed_batches += 1
            if _is_data_error(exc):
                self._db.rollback()
                return self._write_each(rows)
            log.warning("ledger write of %d rows failed (%s: %s); spooling", len(rows),
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self._db.rollback()
            self._db.close()
            self._db = None
            self.db_healthy = False
            return False
        self.counters.written += len(rows)
        return True

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` and add the new ones to the rollups, in one transaction (the
        caller commits). Rows already there (a replay) are skipped by the INSERT, so they
        must be skipped by the rollups too: the ids present are read first, under SQLite's
        write lock (PostgreSQL: a replay is only ever done by the process that spooled)."""
        db = self._db
        assert db is not None
        if db.dialect == "sqlite" and not db.conn.in_transaction:
            db.conn.execute("BEGIN IMMEDIATE")
        ids = [r.get("id") for r in rows]
        marks = ", ".join("?" for _ in ids)
        present = {r[0] for r in db.query(f"SELECT id FROM requests WHERE id IN ({marks})",
                                           ids)}
        fresh = [r for r in rows if r.get("id") not in present]
        if len({r.get("id") for r in fresh}) != len(fresh):  # the same id twice in a batch
            seen: set[Any] = set()
            fresh = [r for r in fresh if not (r.get("id") in seen or seen.add(r.get("id")))]
        if fresh:
            if db.dialect == "postgresql":
                # COPY: the rows are known to be new (their ids were just read), and one
                # COPY costs the server a fraction of a thousand INSERTs. A row it refuses
                # fails the batch, which is then written row by row (_write_each).
                with db._guard(), db.conn.cursor() as cur:
                    with cur.copy(self._copy_sql) as copy:
                        for r in fresh:
                            copy.write_row(schema.values(r))
            else:
                db.executemany(self._sql, [schema.values(r) for r in fresh])
            rollups.apply(db, fresh)

    def _write_each(self, rows: list[dict[str, Any]]) -> bool:
        """Row by row, so one bad row cannot hold back its batch; bad rows are set aside."""
        assert self._db is not None
        for row in rows:
            try:
                self._insert([row])
                self._db.commit()
                self.counters.written += 1
            except Exception as exc:
                self._db.rollback()
                if not _is_data_error(exc):
                    return False  # the database went away mid-way; the caller spools
                with self._spool_lock, open(str(self.spool_path) + ".bad", "ab") as bad:
                    bad.write(orjson.dumps(row) + b"\n")
                log.error("ledger row %s refused by the database (%s); kept in %s.bad",
                          row.get("id"), str(exc).splitlines()[0], self.spool_path)
        return True

    # -- spool ------------------------------------------------------------------
    @property
    def _taken_path(self) -> Path:
        return Path(str(self.spool_path) + ".replaying")

    def _spool_has_rows(self) -> bool:
        for path in (self.spool_path, self._taken_path):
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                pass
        return False

    @property
    def spool_bytes(self) -> int:
        """Bytes of rows waiting in the spool (0: the database has everything)."""
        total = 0
        for path in (self.spool_path, self._taken_path):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    @property
    def degraded(self) -> bool:
        """Rows are going to the spool instead of the database (safe, but not queryable
        until the database answers again)."""
        return not self.db_healthy or self._spool_has_rows()

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        with self._spool_lock:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool_path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        self.counters.spooled += len(rows)

    def _maybe_replay(self, force: bool = False) -> None:
        if not self._spool_has_rows():
            return
        now = time.monotonic()
        # The interval spaces out retries of a database that is down; rows spilled while
        # it is up (the writer fell behind a burst) are replayed at the next flush.
        if not force and not self.db_healthy and \
                now - self._last_replay_try < self.cfg.replay_interval_s:
            return
        self._last_replay_try = now
        self.replay_spool()

    def replay_spool(self) -> int:
        """Move spooled rows into the database; returns how many were replayed.

        The spool is renamed aside first (``.replaying``) and written without holding the
        spool lock, so a request that spills meanwhile never waits on the database; what
        cannot be written goes back in front of whatever was spooled since."""
        taken = self._taken_path
        with self._spool_lock:
            if not taken.exists():  # else: a replay a crash interrupted, taken up again
                if not self._spool_has_rows():
                    return 0
                os.replace(self.spool_path, taken)
        rows = self._read_spool(taken)
        # A spool is a backlog: written in catch-up batches, like a long queue.
        step = max(self.cfg.batch_size, self.cfg.catch_up_batch_size)
        for start in range(0, len(rows), step):
            if not self._write(rows[start:start + step]):
                self._put_back(rows[start:], taken)
                self.counters.replayed += start
                return start
        taken.unlink(missing_ok=True)
        self.counters.replayed += len(rows)
        if rows:
            log.info("replayed %d spooled ledger rows", len(rows))
        return len(rows)

    def _read_spool(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        for i, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                # A torn last line from a crash mid-write: keep it aside, never drop it.
                with self._spool_lock, open(str(self.spool_path) + ".bad", "ab") as bad:
                    bad.write(line + b"\n")
                log.error("ledger spool line %d unreadable; moved to %s.bad", i,
                          self.spool_path)
        return rows

    def _put_back(self, remaining: list[dict[str, Any]], taken: Path) -> None:
        with self._spool_lock:
            newer = self.spool_path.read_bytes() if self.spool_path.exists() else b""
            tmp = self.spool_path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(b"".join(orjson.dumps(r) + b"\n" for r in remaining) + newer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.spool_path)
            taken.unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        return len(self._queue)

