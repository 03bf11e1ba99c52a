"""How a trained router does on rows it never saw, inside and outside its region."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from margin.routing.metrics import apgr


def guarded_scores(scores: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """The guarded router's order: a prompt outside the region goes to the strong model
    before every prompt the router ranks (in random order among its kind: ties are
    averaged by the metrics)."""
    top = float(np.max(scores)) + 1.0 if len(scores) else 1.0
    return np.where(outside, top, scores)


def _apgr_or_none(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float | None:
    # PGR is undefined where the strong model is no better than the weak one.
    if len(scores) < 10 or strong.mean() <= weak.mean():
        return None
    return apgr(scores, weak, strong)


def unseen_report(router: Any, embeddings: np.ndarray, features: np.ndarray,
                  texts: Sequence[str], weak: np.ndarray, strong: np.ndarray
                  ) -> dict[str, Any]:
    """APGR without and with the region guard, the share flagged, and APGR on the rows
    inside and outside the region separately (None where too few rows to say)."""
    scores = router.probabilities_from(embeddings, features, texts)
    out: dict[str, Any] = {"rows": int(len(scores)),
                           "apgr": _apgr_or_none(scores, weak, strong)}
    if router.region is None:
        return {**out, "flagged_share": None, "apgr_guarded": None}
    outside = router.region.outside(embeddings)
    inside = ~outside
    return {**out, "flagged_share": float(outside.mean()),
            "apgr_guarded": _apgr_or_none(guarded_scores(scores, outside), weak, strong),
            "apgr_inside": _apgr_or_none(scores[inside], weak[inside], strong[inside]),
            "apgr_outside": _apgr_or_none(scores[outside], weak[outside], strong[outside])}
