"""Old verifier, cache encoder and plain cosine side by side, at equal hit rates.

A policy's precision means little alone: any policy reaches high precision by answering
less. So each policy's points are set against plain cosine (bundled MiniLM, guards on) at
the threshold whose hit rate is nearest, on the same report-part queries and entries,
through the same ``cache_evaluate`` code, and the gain in labelled-only precision is read
off at several hit rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from margin.bench.lab import cache_evaluate as ev
from margin.bench.lab.cache_benchmark import FINE_COSINE_GRID, policies, table
from margin.bench.lab.pairs import PairSet
from margin.cache.verifier import Verifier

# Fine grids, so that every policy has a point near each hit rate of interest.
FINE_SCORE_GRID = [round(0.30 + 0.01 * i, 3) for i in range(70)]
HIT_RATES = [0.05, 0.10, 0.14, 0.20, 0.25, 0.30, 0.35, 0.40]


@dataclass(frozen=True)
class Contender:
    label: str
    emb: np.ndarray
    verifier: Verifier


def _nearest(points: list[ev.PointMetrics], hit_rate: float) -> ev.PointMetrics:
    return min(points, key=lambda p: abs(p.hit_rate_pos - hit_rate))


def contender_curves(rep: PairSet, texts: list[str], entries: np.ndarray,
                     c: Contender) -> dict[str, list[ev.PointMetrics]]:
    """``cosine+guards`` and ``verifier+guards`` curves of one (encoder, verifier)."""
    r = ev.retrieve(rep, c.emb, c.verifier.operating_point.top_k, extra_entries=entries)
    pol = policies(r, texts, c.emb, c.verifier)
    cos_score, cos_allowed = pol["cosine+guards"]
    ver_score, ver_allowed = pol["verifier+guards"]
    return {f"{c.label}: cosine+guards": ev.curve(r, cos_score, FINE_COSINE_GRID, cos_allowed),
            f"{c.label}: verifier+guards": ev.curve(r, ver_score, FINE_SCORE_GRID, ver_allowed)}


def shipped_point(rep: PairSet, texts: list[str], entries: np.ndarray,
                  c: Contender) -> ev.PointMetrics:
    r = ev.retrieve(rep, c.emb, c.verifier.operating_point.top_k, extra_entries=entries)
    score, allowed = policies(r, texts, c.emb, c.verifier)["verifier+guards"]
    t = c.verifier.operating_point.threshold
    return ev.point_metrics(r, ev.choose(r, score, t, allowed), t)


def gain_rows(baseline: list[ev.PointMetrics], curves: dict[str, list[ev.PointMetrics]],
              hit_rates: list[float]) -> list[list[str]]:
    """One row per hit rate: baseline precision, then each curve's precision and gain."""
    rows = []
    for h in hit_rates:
        base = _nearest(baseline, h)
        row = [f"{h:.2f}", f"{base.precision_labelled:.3f} ({base.hit_rate_pos:.3f})"]
        for pts in curves.values():
            p = _nearest(pts, h)
            row.append(f"{p.precision_labelled:.3f} ({p.hit_rate_pos:.3f}) "
                       f"{p.precision_labelled - base.precision_labelled:+.3f}")
        rows.append(row)
    return rows


def comparison_section(rep: PairSet, texts: list[str], entries: np.ndarray,
                       base: Contender, others: list[Contender]) -> tuple[str, dict]:
    """Markdown and numbers: every contender against plain cosine on ``base``'s vectors."""
    all_curves: dict[str, list[ev.PointMetrics]] = {}
    for c in [base, *others]:
        all_curves.update(contender_curves(rep, texts, entries, c))
    baseline = all_curves.pop(f"{base.label}: cosine+guards")
    header = ["hit rate (pos)", f"plain cosine + guards ({base.label})",
              *all_curves.keys()]
    md = ("Labelled-only precision at equal hit rate (each cell: precision (hit rate actually "
          "reached) gain over plain cosine), report part, "
          f"{len(entries):,} entries:\n\n" + table(header, gain_rows(baseline, all_curves,
                                                                     HIT_RATES)))
    shipped = {c.label: shipped_point(rep, texts, entries, c) for c in [base, *others]}
    srows = []
    for label, p in shipped.items():
        b = _nearest(baseline, p.hit_rate_pos)
        srows.append([label, f"{p.threshold:.3f}", f"{p.hit_rate_pos:.3f}", f"{p.precision:.3f}",
                      f"{p.precision_labelled:.3f}",
                      f"{b.precision_labelled:.3f} (cosine {b.threshold:g})",
                      f"{p.precision_labelled - b.precision_labelled:+.3f}"])
    md += ("\n\nAt each verifier's calibrated threshold (chosen on the calibrate part):\n\n"
           + table(["verifier", "threshold", "hit rate (pos)", "precision, strict",
                    "precision, labelled-only", "plain cosine + guards at that hit rate",
                    "gain"], srows))
    data = {"curves": {k: [p.__dict__ for p in v] for k, v in all_curves.items()},
            "baseline": [p.__dict__ for p in baseline],
            "shipped": {k: p.__dict__ for k, p in shipped.items()}}
    return md + "\n", data
