"""The ledger's journal: every finished row is appended to a local file the moment the
response completes, so a row survives a SIGKILL of the process while it waits in memory
for the database writer's next batch.

Layout: a directory of segments, one open segment per process, named
``<pid>-<token>-<n>.jsonl`` (JSON lines). Each row is one ``write()`` to a file opened with
``O_APPEND``; once the call returns the bytes are in the kernel's page cache and outlive
the process whatever kills it. Whether they outlive the machine is the fsync policy:

- ``never`` (default): nothing is lost when the process dies, however it dies; a power
  loss or kernel crash loses the rows the database has not committed yet (at most about
  one flush interval: the same window as without a journal);
- ``always``: ``fsync`` after every row, on the request path: a row survives a power loss
  too, for a disk flush per request (tens of microseconds on a local NVMe disk,
  milliseconds on network block storage).

The database writer takes the same rows from its in-memory queue; the journal is never
read on the request path. At each flush the writer *seals* the open segment (the next
rows go to a new one) and, once every row queued before the seal is in the database (or
its fsync'd spool), deletes the sealed segment. Segments a dead process left behind are
replayed at start; inserts are idempotent on the request id, so a row that reached both
the database and the journal is not counted twice.

Several processes may share the directory (``--workers``, or replicas on one volume):
each holds an exclusive ``flock`` on its own segments, so a starting process replays only
segments whose owner is gone (the kernel drops the lock of a killed process).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import orjson

from margin.config import LedgerConfig
from margin.metering.db import is_postgres

log = logging.getLogger("margin.ledger")

FsyncPolicy = Literal["always", "never"]


def journal_dir(cfg: LedgerConfig) -> Path:
    if cfg.journal_path:
        return Path(cfg.journal_path)
    if is_postgres(cfg.url):
        return Path("margin-ledger.journal")
    return Path(cfg.url + ".journal")


class _Segment:
    """One open, locked segment file."""

    def __init__(self, directory: Path, name: str) -> None:
        tmp = directory / (name + ".new")
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        # Locked before it has its final name, so no starting process can take it for a
        # dead one's; the lock belongs to the inode and survives the rename.
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.path = directory / name
        os.rename(tmp, self.path)
        self.rows = 0

    def close(self) -> None:
        os.close(self.fd)


class Journal:
    """Append-only, per-process journal of ledger rows (see the module docstring)."""

    def __init__(self, directory: str | Path, fsync: FsyncPolicy = "never") -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._n = 0
        # In containers a restarted process often gets its predecessor's pid: the token
        # keeps its new segments from taking the names of the ones it must replay.
        self._token = os.urandom(4).hex()
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = self._new_segment()

    def close(self) -> None:
        """Close; rows not retired stay on disk and are replayed at the next start."""
        with self._lock:
            current, sealed = self._current, self._sealed
            self._sealed, self._current = [], None
        if current is not None and not current.rows:
            os.unlink(current.path)
        for seg in [*sealed, *([current] if current else [])]:
            seg.close()

    def _new_segment(self) -> _Segment:
        self._n += 1
        return _Segment(self.directory, f"{os.getpid()}-{self._token}-{self._n}.jsonl")

    # -- hot path ------------------------------------------------------------------------
    def append(self, row: dict[str, Any], then: Callable[[dict[str, Any]], None]) -> None:
        """Write one row, then hand it on (to the writer's queue) under the same lock, so
        a seal never falls between the two: every row in a sealed segment is queued."""
        data = orjson.dumps(row) + b"\n"
        with self._lock:
            seg = self._current
            if seg is None:
                raise RuntimeError("the ledger journal is not open")
            os.write(seg.fd, data)
            seg.rows += 1
            if self.fsync == "always":
                os.fsync(seg.fd)
            then(row)

    # -- the writer's side -----------------------------------------------------------------
    def seal(self) -> bool:
        """Start a new segment if the open one has rows; every row of a sealed segment is
        already queued. Returns whether sealed segments wait to be retired."""
        with self._lock:
            seg = self._current
            if seg is not None and seg.rows:
                self._current = self._new_segment()
                self._sealed.append(seg)
            return bool(self._sealed)

    def retire(self) -> int:
        """Delete the sealed segments: call only once every row queued before the last
        seal is durable elsewhere (the database or the spool). Returns the rows retired."""
        with self._lock:
            sealed, self._sealed = self._sealed, []
        n = 0
        for seg in sealed:
            os.unlink(seg.path)
            seg.close()
            n += seg.rows
        return n

    @property
    def writable(self) -> bool:
        return self._current is not None and os.access(self.directory, os.W_OK)

    # -- start-up --------------------------------------------------------------------------
    def orphans(self) -> Iterator[tuple[Path, list[dict[str, Any]], list[bytes]]]:
        """Segments left by processes that are gone: (path, rows, unreadable lines).

        Each is locked while yielded; the caller writes its rows somewhere durable and
        then calls ``forget(path)``; a segment not forgotten stays for the next start."""
        if not self.directory.is_dir():
            return
        own = {s.path for s in [*self._sealed, *([self._current] if self._current else [])]}
        for path in self.directory.glob("*.jsonl.new"):
            _remove_if_unlocked(path)  # a process died between creating and naming one
        for path in sorted(self.directory.glob("*.jsonl")):
            if path in own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # another process replayed it meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                if not path.exists():
                    continue  # replayed and deleted by another process before our lock
                rows, bad = _read_rows(path)
                yield path, rows, bad
            finally:
                os.close(fd)

    @staticmethod
    def forget(path: Path) -> None:
        path.unlink(missing_ok=True)


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # being named by a live process right now
    finally:
        os.close(fd)


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    rows: list[dict[str, Any]] = []
    bad: list[bytes] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            # Only a torn last line after a power loss can look like this.
            bad.append(line)
    return rows, bad
