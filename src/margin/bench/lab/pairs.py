"""Labelled question pairs (QQP-style) for calibrating and scoring the semantic cache.

The protocol (``shared/data/README.md``): insert every ``text_a``, ask every ``text_b``; a hit
is correct when the returned entry is a paraphrase of the query, i.e. both lie in the same
class of the label-1 graph (paraphrase taken as transitive). Anything else is a false hit,
including an entry nobody labelled against the query: the benchmark stays conservative.

Parts for fitting, calibrating and reporting are cut along connected components of the
graph of *all* pairs, so no question appears in two parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from margin.errors import InputError


@dataclass(frozen=True, slots=True)
class PairSet:
    """Pairs over a shared sentence table: ``a``/``b`` index into ``texts``."""

    texts: list[str]
    a: np.ndarray          # int64, one per pair
    b: np.ndarray          # int64, one per pair
    label: np.ndarray      # int8, 1 = paraphrase
    para_class: np.ndarray  # int64 per text: component of the label-1 graph
    component: np.ndarray  # int64 per text: component of the graph of all pairs
    # Sorted keys of the paraphrase-class pairs that a label-0 pair of the whole file proves
    # different (``class_pair_key``); kept by ``subset`` so that every part can tell a proven
    # false hit from an unlabelled one.
    proven_different: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def subset(self, mask: np.ndarray) -> PairSet:
        return PairSet(self.texts, self.a[mask], self.b[mask], self.label[mask],
                       self.para_class, self.component, self.proven_different)


def class_pair_key(x: np.ndarray, y: np.ndarray, n_texts: int) -> np.ndarray:
    """One int64 per unordered pair of paraphrase classes (class ids are text ids < n)."""
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    return lo.astype(np.int64) * n_texts + hi


def _components(n: int, edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for x, y in zip(edges_a.tolist(), edges_b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def pairs_from_rows(rows: list[tuple[str, str, int]]) -> PairSet:
    index: dict[str, int] = {}
    texts: list[str] = []

    def intern(text: str) -> int:
        if text not in index:
            index[text] = len(texts)
            texts.append(text)
        return index[text]

    aa = np.array([intern(ta) for ta, _, _ in rows], dtype=np.int64)
    bb = np.array([intern(tb) for _, tb, _ in rows], dtype=np.int64)
    ll = np.array([1 if lab else 0 for _, _, lab in rows], dtype=np.int8)
    pos = ll == 1
    para = _components(len(texts), aa[pos], bb[pos])
    # A label-0 pair says its two classes differ (paraphrase taken as transitive, as above).
    proven = np.unique(class_pair_key(para[aa[~pos]], para[bb[~pos]], len(texts)))
    return PairSet(texts, aa, bb, ll, para, _components(len(texts), aa, bb), proven)


def load_pairs(path: str | Path) -> PairSet:
    """Read ``{"text_a", "text_b", "label"}`` JSON lines."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read pairs ({exc.strerror})") from exc
    rows: list[tuple[str, str, int]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["text_a"]), str(row["text_b"]), int(row["label"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{lineno}: expected {{text_a, text_b, label}}") from exc
    if not rows:
        raise InputError(f"{path}: no pairs")
    return pairs_from_rows(rows)


def load_mock_pairs(path: str | Path) -> PairSet:
    """GPTCache's ``mock_data.json``: ``[{"origin", "similar"}]``, every pair a paraphrase."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        rows = [(str(r["origin"]), str(r["similar"]), 1) for r in data]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: expected a JSON list of {{origin, similar}}") from exc
    if not rows:
        raise InputError(f"{path}: no pairs")
    return pairs_from_rows(rows)


def split_by_component(pairs: PairSet, shares: tuple[float, ...], seed: int = 0) -> list[PairSet]:
    """Cut the pairs into parts of roughly ``shares`` of the pairs, whole components at a time."""
    comp_of_pair = pairs.component[pairs.a]
    comps, counts = np.unique(comp_of_pair, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(comps))
    bounds = np.cumsum(np.array(shares) / sum(shares)) * len(pairs)
    part_of_comp = np.empty(len(comps), dtype=np.int64)
    filled = 0
    for i in order:
        part_of_comp[i] = min(int(np.searchsorted(bounds, filled, side="right")), len(shares) - 1)
        filled += counts[i]
    part = part_of_comp[np.searchsorted(comps, comp_of_pair)]
    return [pairs.subset(part == k) for k in range(len(shares))]
