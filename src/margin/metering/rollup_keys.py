"""Grouping a batch's rows by a rollup's key columns with numpy: each key column as small
integer codes, the columns combined into one int64 per row, and ``np.unique`` over that.

Why: the writer builds every table's sums for every batch (``rollups.aggregate``), and a
1,000-row batch has some 50,000 (row, table) keys. As Python tuples in a dict that was
the largest part of the writer's own CPU per batch (profiled with the bench's rows);
here the per-value Python is one dict lookup per row and column, once for all tables.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# One key column: each row's code, and the value each code stands for.
Part = tuple[np.ndarray, Sequence[Any]]

_MAX_KEYS = 1 << 62


class Codes:
    """Values as codes 0, 1, 2… in order of first appearance (shared by several columns,
    so that a text is one code wherever it appears)."""

    def __init__(self) -> None:
        self._index: dict[Any, int] = {}

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        index = self._index
        return np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64,
                           len(values))

    def values(self) -> list[Any]:
        """Each code's value (call after the last ``encode``)."""
        return list(self._index)


def buckets(b: np.ndarray) -> Part:
    """A bucket column (integers) as a part: its offset from the smallest."""
    if not len(b):
        return b.astype(np.int64), range(0)
    lo, hi = int(b.min()), int(b.max())
    return (b - lo).astype(np.int64), range(lo, hi + 1)


def group(parts: Sequence[Part]) -> tuple[list[tuple], np.ndarray]:
    """The distinct keys of the rows whose key columns are ``parts`` (in key order, sorted
    by code), and each row's group id (an index into them)."""
    n = len(parts[0][0])
    combined = np.zeros(n, dtype=np.int64)
    size = 1
    for codes, values in parts:
        size *= max(1, len(values))
        if size >= _MAX_KEYS:   # too many combinations for one int64: as tuples
            return _group_tuples(parts)
        combined = combined * max(1, len(values)) + codes
    _, first, gids = np.unique(combined, return_index=True, return_inverse=True)
    columns = [[values[c] for c in codes[first].tolist()] for codes, values in parts]
    return list(zip(*columns)), gids.reshape(-1).astype(np.int64)


def _group_tuples(parts: Sequence[Part]) -> tuple[list[tuple], np.ndarray]:
    index: dict[tuple, int] = {}
    rows = zip(*([values[c] for c in codes.tolist()] for codes, values in parts))
    gids = [index.setdefault(k, len(index)) for k in rows]
    return list(index), np.asarray(gids, dtype=np.int64)


def sums(parts: Sequence[Part], m: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """The distinct keys and, per key, the column sums of ``m`` (one row per input row)."""
    keys, gids = group(parts)
    out = np.empty((len(keys), m.shape[1]))
    for j in range(m.shape[1]):
        out[:, j] = np.bincount(gids, weights=m[:, j], minlength=len(keys))
    return keys, out
