"""Scoring a semantic-cache policy on labelled pairs, in bulk.

``retrieve`` plays the cache once: every ``text_a`` inserted (plus optional distractors),
every ``text_b`` asked, keeping each query's ``k`` nearest entries by exact cosine. Policies
(a cosine threshold, the guards, the verifier at some threshold) are then cheap to replay on
that table, which is how the precision / hit-rate curves are drawn.

The protocol is ``../shared/data/README.md``'s: a query whose text is itself an entry is the
exact cache's hit, not the semantic cache's, and is left out (QQP reuses questions, so about
a quarter of its positive queries are entries). Precision is reported two ways: *strict* (a
hit outside the query's paraphrase class is wrong, although QQP leaves many true paraphrases
unlabelled) and *labelled-only* (only a hit that a label-0 pair proves wrong is wrong; hits
nobody labelled either way are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from margin.cache.features import text_info
from margin.cache.guards import refusal
from margin.bench.lab.pairs import PairSet, class_pair_key


@dataclass(frozen=True)
class Retrieval:
    query: np.ndarray       # (n,) text id asked
    label: np.ndarray       # (n,) the pair's label: 1 = the query has a paraphrase inserted
    cand: np.ndarray        # (n, k) text ids of the nearest entries, -1 where none
    cos: np.ndarray         # (n, k) their cosine, descending
    correct: np.ndarray     # (n, k) candidate is in the query's paraphrase class
    proven_wrong: np.ndarray  # (n, k) a label-0 pair proves the candidate is no paraphrase
    own_entry: np.ndarray     # (n,) text id of the query's own pair's text_a
    left_out: int = 0       # queries identical to an entry (the exact cache's), not scored

    @property
    def k(self) -> int:
        return int(self.cand.shape[1])


def retrieve(pairs: PairSet, emb: np.ndarray, k: int, *, extra_entries: np.ndarray | None = None,
             chunk: int = 2048, keep_identical: bool = False) -> Retrieval:
    """Top-``k`` entries (by exact cosine) for every pair's ``text_b`` that is not itself an
    entry (``keep_identical`` scores those too, as the earlier protocol did)."""
    entries = np.unique(pairs.a)
    if extra_entries is not None:
        entries = np.unique(np.concatenate([entries, extra_entries]))
    identical = np.isin(pairs.b, entries)
    left_out = 0 if keep_identical else int(identical.sum())
    if left_out:
        pairs = pairs.subset(~identical)
    matrix = emb[entries]
    k_eff = min(k, len(entries))
    cand = np.full((len(pairs), k), -1, dtype=np.int64)
    cos = np.full((len(pairs), k), -1.0, dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        q = emb[pairs.b[start : start + chunk]]
        sims = q @ matrix.T
        top = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1)
        cand[start : start + len(q), :k_eff] = entries[np.take_along_axis(top, order, axis=1)]
        cos[start : start + len(q), :k_eff] = np.take_along_axis(top_sims, order, axis=1)
    cls = pairs.para_class
    cand_cls, query_cls = cls[np.maximum(cand, 0)], cls[pairs.b][:, None]
    correct = (cand >= 0) & (cand_cls == query_cls)
    keys = class_pair_key(cand_cls, np.broadcast_to(query_cls, cand_cls.shape), len(cls))
    proven = (cand >= 0) & ~correct & np.isin(keys, pairs.proven_different)
    return Retrieval(pairs.b.copy(), pairs.label.copy(), cand, cos, correct, proven,
                     pairs.a.copy(), left_out)


def guard_table(r: Retrieval, texts: list[str]) -> np.ndarray:
    """(n, k) True where the guards let the candidate answer the query."""
    ok = np.zeros(r.cand.shape, dtype=bool)
    for i, j in zip(*np.nonzero(r.cand >= 0)):
        ok[i, j] = refusal(texts[r.query[i]], texts[r.cand[i, j]]) is None
    return ok


def verifier_table(r: Retrieval, texts: list[str], emb: np.ndarray, verifier: object,
                   floor: float) -> np.ndarray:
    """(n, k) verifier scores of candidates at or above the cosine ``floor``; −1 elsewhere."""
    scores = np.full(r.cand.shape, -1.0)
    rows, cols = np.nonzero((r.cand >= 0) & (r.cos >= floor))
    if len(rows) == 0:
        return scores
    q_ids, c_ids = r.query[rows], r.cand[rows, cols]
    infos = {t: text_info(texts[t]) for t in np.unique(np.concatenate([q_ids, c_ids])).tolist()}
    step = 50_000
    for s in range(0, len(rows), step):
        qi, ci = q_ids[s : s + step], c_ids[s : s + step]
        scores[rows[s : s + step], cols[s : s + step]] = verifier.score(  # type: ignore[attr-defined]
            [infos[t] for t in qi.tolist()], [infos[t] for t in ci.tolist()], emb[qi], emb[ci])
    return scores


def choose(r: Retrieval, score: np.ndarray, threshold: float,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """Index of the answering candidate per query (−1 = miss): best ``score`` ≥ threshold."""
    s = np.where(allowed, score, -np.inf) if allowed is not None else score
    s = np.where(r.cand >= 0, s, -np.inf)
    best = np.argmax(s, axis=1)
    hit = np.take_along_axis(s, best[:, None], axis=1)[:, 0] >= threshold
    return np.where(hit, best, -1)


@dataclass(frozen=True)
class PointMetrics:
    threshold: float
    hit_rate_pos: float          # positive queries answered from cache (right or wrong)
    correct_rate_pos: float      # positive queries answered with a paraphrase
    false_hit_rate_neg: float    # negative queries answered with a non-paraphrase
    precision: float             # strict: correct hits / all hits, over every query
    hits: int
    precision_labelled: float = 1.0  # correct / (correct + hits a label-0 pair proves wrong)

    def row(self) -> list[str]:
        return [f"{self.threshold:.3f}", f"{self.hit_rate_pos:.3f}", f"{self.correct_rate_pos:.3f}",
                f"{self.false_hit_rate_neg:.3f}", f"{self.precision:.3f}",
                f"{self.precision_labelled:.3f}", str(self.hits)]


def point_metrics(r: Retrieval, chosen: np.ndarray, threshold: float) -> PointMetrics:
    hit = chosen >= 0
    at = (np.arange(len(chosen)), np.maximum(chosen, 0))
    right = hit & r.correct[at]
    proven_wrong = hit & r.proven_wrong[at]
    pos, neg = r.label == 1, r.label == 0
    n_hits = int(hit.sum())
    judged = int(right.sum() + proven_wrong.sum())
    return PointMetrics(
        threshold=threshold,
        hit_rate_pos=float(hit[pos].mean()) if pos.any() else 0.0,
        correct_rate_pos=float(right[pos].mean()) if pos.any() else 0.0,
        false_hit_rate_neg=float((hit & ~right)[neg].mean()) if neg.any() else 0.0,
        precision=float(right.sum() / n_hits) if n_hits else 1.0,
        hits=n_hits,
        precision_labelled=float(right.sum() / judged) if judged else 1.0,
    )


def curve(r: Retrieval, score: np.ndarray, thresholds: list[float],
          allowed: np.ndarray | None = None) -> list[PointMetrics]:
    return [point_metrics(r, choose(r, score, t, allowed), t) for t in thresholds]


def threshold_for_precision(r: Retrieval, score: np.ndarray, target: float,
                            allowed: np.ndarray | None = None, grid: int = 400,
                            labelled_only: bool = True) -> float:
    """Lowest threshold whose precision (and every higher threshold's) reaches ``target``:
    labelled-only precision by default, since strict precision counts QQP's many unlabelled
    true paraphrases as wrong and would push the threshold where almost nothing hits."""
    finite = score[(r.cand >= 0) & (score > -1)]
    if finite.size == 0:
        return 1.0
    candidates = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, grid)))
    ok_from = None
    for t in candidates[::-1]:
        m = point_metrics(r, choose(r, score, float(t), allowed), float(t))
        if (m.precision_labelled if labelled_only else m.precision) >= target:
            ok_from = float(t)
        else:
            break
    return ok_from if ok_from is not None else float(candidates[-1])


def false_hit_sources(r: Retrieval, chosen: np.ndarray, own_entry: np.ndarray) -> dict[str, int]:
    """Split the false hits: the query's own labelled partner (a labelled non-paraphrase)
    versus entries nobody labelled against the query (often paraphrases in fact, split
    across label components — the protocol still counts them as wrong)."""
    hit = chosen >= 0
    idx = np.arange(len(chosen))
    cand = np.where(hit, r.cand[idx, np.maximum(chosen, 0)], -1)
    wrong = hit & ~r.correct[idx, np.maximum(chosen, 0)]
    own = wrong & (cand == own_entry)
    return {"false_hits": int(wrong.sum()), "own_pair": int(own.sum()),
            "unlabelled_entry": int((wrong & ~own).sum())}
