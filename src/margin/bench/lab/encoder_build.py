"""Building the semantic cache's own encoder and the verifier that goes with it.

One deterministic pipeline behind ``margin cache build-encoder``: cut the labelled pairs by
connected component exactly as ``margin bench semantic-cache`` does (fit / calibrate /
report), fine-tune MiniLM on the fit part (``encoder_tune``), embed every question with the
result, fit the verifier on the fit part over those vectors, pick its threshold on the
calibrate part (with the fit part's entries in the cache too), and write both into one
folder with a checksum of the weights, so the cache can tell that the verifier belongs to
the encoder. The report part is left alone for the benchmark.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from margin.bench.lab import cache_evaluate as ev
from margin.bench.lab.cache_benchmark import (SHIPPED_POLICY, SPLIT_SHARES, calibrate,
                                              embed_texts, policies, split_parts,
                                              with_operating_point)
from margin.bench.lab.encoder_tune import TuneConfig, fine_tune
from margin.bench.lab.pairs import PairSet
from margin.cache.verifier import ENCODER_INFO, ENCODER_VERIFIER, Verifier


@dataclass(frozen=True)
class BuiltEncoder:
    out_dir: Path
    checksum: str
    verifier: Verifier
    info: dict[str, Any]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_encoder(pairs: PairSet, pairs_path: Path, out_dir: Path, *, base_dir: Path,
                  seed: int = 0, target: float = 0.96, tune: TuneConfig | None = None,
                  embedding_cache: Path | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> BuiltEncoder:
    tune = tune or TuneConfig(seed=seed)
    tuned = fine_tune(base_dir, split_parts(pairs, seed)[0], out_dir, tune, progress)
    return fit_encoder_verifier(pairs, pairs_path, out_dir, tuned, seed=seed, target=target,
                                embedding_cache=embedding_cache)


def fit_encoder_verifier(pairs: PairSet, pairs_path: Path, out_dir: Path,
                         tuned: dict[str, Any], *, seed: int, target: float,
                         embedding_cache: Path | None = None) -> BuiltEncoder:
    """The second half of a build: the verifier over the tuned encoder's vectors."""
    from margin.bench.lab.verifier_fit import FitConfig, fit_verifier

    fit, cal, _ = split_parts(pairs, seed)
    # Cached under the weights' checksum, where ``margin bench semantic-cache --encoder``
    # finds them again.
    emb = embed_texts(pairs.texts, embedding_cache, out_dir, tuned["checksum"][:16])
    verifier = fit_verifier(fit, emb, FitConfig(seed=seed),
                            {"split_seed": seed, "split_shares": list(SPLIT_SHARES),
                             "encoder_checksum": tuned["checksum"]})
    r_cal = ev.retrieve(cal, emb, verifier.operating_point.top_k, extra_entries=np.unique(fit.a))
    chosen = calibrate(r_cal, policies(r_cal, pairs.texts, emb, verifier), target)
    verifier = with_operating_point(
        verifier, chosen[SHIPPED_POLICY], chosen["cosine+guards"],
        {"target_precision": target, "calibrated_on_pairs": len(cal),
         "fitted_on": pairs_path.name})
    verifier.save(out_dir / ENCODER_VERIFIER)
    info = {"checksum": tuned["checksum"], "pairs": pairs_path.name,
            "pairs_sha256": file_sha256(pairs_path) if pairs_path.exists() else None,
            "n_pairs": len(pairs), "split_seed": seed, "training": tuned,
            "verifier_sha256": file_sha256(out_dir / ENCODER_VERIFIER)}
    (out_dir / ENCODER_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return BuiltEncoder(out_dir, tuned["checksum"], verifier, info)
