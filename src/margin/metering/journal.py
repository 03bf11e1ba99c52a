"""The ledger's journal: every finished row is appended to a local file the moment the
response completes, so a row survives a SIGKILL of the process while it waits in memory
for the database writer's next batch.

Layout: a directory of segments, one open segment per process, named
``<pid>-<token>-<n>.jsonl`` (JSON lines, zero bytes after the last row). A segment is a
file of fixed size mapped into memory (``MAP_SHARED``): appending a row is a copy into
the map, with no system call. The mapped pages are the kernel's page cache of the file,
so the bytes outlive the process whatever kills it. (A ``write()`` per row would do the
same for durability, but each one lets go of the GIL, and the ledger writer's thread
takes it: the request then waits for that thread's Python work, about 0.1–0.2 ms a row
on average and milliseconds at P99, where the copy costs a few microseconds.) Whether the
rows outlive the machine is the fsync policy:

- ``never`` (default): nothing is lost when the process dies, however it dies; a power
  loss or kernel crash loses the rows the database has not committed yet (at most about
  one flush interval: the same window as without a journal);
- ``always``: ``msync`` after every row, on the request path: a row survives a power loss
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
import mmap
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


SEGMENT_BYTES = 4 << 20
"""A segment's size: at ~1 KB a row, thousands of rows, while the writer seals the open
segment at every flush (a few hundred milliseconds of traffic)."""


class _Segment:
    """One open, locked, memory-mapped segment file."""

    def __init__(self, directory: Path, name: str, size: int = SEGMENT_BYTES) -> None:
        tmp = directory / (name + ".new")
        self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Locked before it has its final name, so no starting process can take it for a
        # dead one's; the lock belongs to the inode and survives the rename.
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, size)  # sparse: disk is used only as rows fill it
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size
        self.used = 0
        self.path = directory / name
        os.rename(tmp, self.path)
        self.rows = 0

    def fits(self, n: int) -> bool:
        return self.used + n <= self.size

    def append(self, data: bytes) -> None:
        end = self.used + len(data)
        self.map[self.used:end] = data
        self.used = end
        self.rows += 1

    def close(self, kept: bool = True) -> None:
        self.map.close()
        if kept:  # left for replay: cut to its rows (a crash leaves zeros, skipped too)
            try:
                os.ftruncate(self.fd, self.used)
            except OSError:
                pass
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
        self._full: list[_Segment] = []
        self._sealed: list[_Segment] = []

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = self._new_segment()

    def close(self) -> None:
        """Close; rows not retired stay on disk and are replayed at the next start."""
        with self._lock:
            current, sealed = self._current, [*self._sealed, *self._full]
            self._sealed, self._full, self._current = [], [], None
        if current is not None and not current.rows:
            os.unlink(current.path)
            current.close(kept=False)
            current = None
        for seg in [*sealed, *([current] if current else [])]:
            seg.close()

    def _new_segment(self, at_least: int = 0) -> _Segment:
        self._n += 1
        return _Segment(self.directory, f"{os.getpid()}-{self._token}-{self._n}.jsonl",
                        max(SEGMENT_BYTES, at_least))

    # -- hot path ------------------------------------------------------------------------
    def append(self, row: dict[str, Any], then: Callable[[dict[str, Any]], None]) -> None:
        """Write one row, then hand it on (to the writer's queue) under the same lock, so
        a seal never falls between the two: every row in a sealed segment is queued."""
        data = orjson.dumps(row) + b"\n"
        with self._lock:
            seg = self._current
            if seg is None:
                raise RuntimeError("the ledger journal is not open")
            if not seg.fits(len(data)):  # full before the writer sealed it: the next one
                self._full.append(seg)  # sealed with the open one at the next seal
                seg = self._current = self._new_segment(len(data))
            seg.append(data)
            if self.fsync == "always":
                seg.map.flush()
            then(row)

    # -- the writer's side -----------------------------------------------------------------
    def seal(self) -> bool:
        """Start a new segment if the open one has rows; every row of a sealed segment is
        already queued. Returns whether sealed segments wait to be retired."""
        with self._lock:
            self._sealed.extend(self._full)
            self._full = []
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
            seg.close(kept=False)
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
        own = {s.path for s in [*self._sealed, *self._full,
                                *([self._current] if self._current else [])]}
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
    # A segment its process could not close ends in the zeros after its last row.
    for line in path.read_bytes().rstrip(b"\0").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            # Only a torn last line after a power loss can look like this.
            bad.append(line)
    return rows, bad
