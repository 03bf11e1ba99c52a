"""What the C allocator keeps: glibc malloc arenas and the free memory it does not return.

A long-running gateway with a thread pool (auth hashing, metrics rendering, the ledger
writer, to_thread calls) gets one malloc arena per thread that ever allocated, up to 8 per
core; memory freed in one arena is not reused by another, and free pages inside the heap
stay resident until ``malloc_trim``. Under many unique requests that reads as steady RSS
growth with a flat Python heap. Two levers, both no-ops where glibc is not the allocator:
``limit_arenas`` (like ``MALLOC_ARENA_MAX``, but set from config at start-up) and ``trim``
(hand free pages back to the kernel; cheap, run periodically).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8  # glibc's mallopt() parameter number

_libc: ctypes.CDLL | None | bool = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None
        except OSError:
            _libc = None
    return _libc  # type: ignore[return-value]


def limit_arenas(n: int) -> bool:
    """At most ``n`` malloc arenas from now on (0: leave the allocator's default; an
    explicit ``MALLOC_ARENA_MAX`` in the environment wins). True when it was applied."""
    lib = _glibc()
    if n <= 0 or lib is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(lib.mallopt(_M_ARENA_MAX, n))


def trim() -> bool:
    """Return free heap pages to the kernel; True when some were."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux), 0 where it cannot be read."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
