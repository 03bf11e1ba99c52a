"""The semantic-cache benchmark's body (the CLI is ``margin.bench.semantic_cache``).

Everything here is plain functions over a ``PairSet`` and its embeddings, so the fitting,
calibration and scoring can be driven from a notebook as well as from the command.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from margin.bench.lab import cache_evaluate as ev
from margin.bench.lab.pairs import PairSet, load_mock_pairs, split_by_component
from margin.errors import InputError
from margin.cache.verifier import OperatingPoint, Verifier

SPLIT_SHARES = (0.6, 0.2, 0.2)   # fit / calibrate / report, by connected component
DEFAULT_TARGET_PRECISION = 0.96  # calibrate above 0.95 so that held-out pairs still clear it
COSINE_GRID = [0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98]
VERIFIER_GRID = [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
SHIPPED_POLICY = "verifier+guards"
CURVE_HEADER = ["threshold", "hit rate (pos)", "correct hits (pos)", "false-hit rate (neg)",
                "precision, strict", "precision, labelled-only", "hits"]
# Plain cosine on a fine grid: the curve the shipped policy is compared with at equal hit rate.
FINE_COSINE_GRID = [round(0.80 + 0.0025 * i, 4) for i in range(80)]


def embed_texts(texts: list[str], cache_dir: Path | None,
                model_dir: Path | None = None, model_tag: str = "") -> np.ndarray:
    """Unit vectors of ``texts`` by the bundled MiniLM (or the model in ``model_dir``, told
    apart on disk by ``model_tag``), cached on disk by content (80k texts take minutes)."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:20]
    name = f"minilm-{digest}.npy" if model_dir is None else f"enc-{model_tag}-{digest}.npy"
    path = cache_dir / name if cache_dir else None
    if path is not None and path.exists():
        return np.load(path)
    from margin.embedding.minilm import shared_embedder

    vectors = shared_embedder(model_dir).encode(texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def _default_embedder_label() -> str:
    from margin.embedding.minilm import shared_embedder

    return shared_embedder().variant.label


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


Policies = dict[str, tuple[np.ndarray, np.ndarray | None]]


def policies(r: ev.Retrieval, texts: list[str], emb: np.ndarray, verifier: Verifier) -> Policies:
    """Score table and guard mask of each policy, ready for ``ev.curve``."""
    guards = ev.guard_table(r, texts)
    vscore = ev.verifier_table(r, texts, emb, verifier, verifier.operating_point.candidate_floor)
    return {"cosine": (r.cos, None), "cosine+guards": (r.cos, guards),
            "verifier": (vscore, None), "verifier+guards": (vscore, guards)}


def curves(r: ev.Retrieval, pol: Policies, cos_grid: list[float],
           ver_grid: list[float]) -> dict[str, list[ev.PointMetrics]]:
    return {name: ev.curve(r, score, cos_grid if name.startswith("cosine") else ver_grid, allowed)
            for name, (score, allowed) in pol.items()}


def calibrate(r: ev.Retrieval, pol: Policies, target: float) -> dict[str, float]:
    return {name: ev.threshold_for_precision(r, score, target, allowed)
            for name, (score, allowed) in pol.items()}


def at_points(r: ev.Retrieval, pol: Policies, chosen: dict[str, float]) -> dict[str, ev.PointMetrics]:
    return {name: ev.point_metrics(r, ev.choose(r, score, chosen[name], allowed), chosen[name])
            for name, (score, allowed) in pol.items()}


def with_operating_point(v: Verifier, threshold: float, cosine_threshold: float,
                         meta: dict[str, Any]) -> Verifier:
    op = v.operating_point
    point = OperatingPoint(round(threshold, 4), op.candidate_floor, op.top_k,
                           round(cosine_threshold, 4))
    return Verifier(v.embedding_model, v.trees, point, {**v.meta, **meta})


def shipped_thresholds(v: Verifier) -> dict[str, float]:
    op = v.operating_point
    return {"cosine": op.cosine_only_threshold, "cosine+guards": op.cosine_only_threshold,
            "verifier": op.threshold, "verifier+guards": op.threshold}


def point_table(points: dict[str, ev.PointMetrics]) -> str:
    return table(["policy"] + CURVE_HEADER,
                 [[name] + p.row() for name, p in points.items()])


def curve_tables(cv: dict[str, list[ev.PointMetrics]]) -> str:
    return "\n\n".join(f"`{name}`:\n\n" + table(CURVE_HEADER, [p.row() for p in pts])
                       for name, pts in cv.items())


def guard_effect(points: dict[str, ev.PointMetrics]) -> str:
    """What the guards cost in hits and save in false hits, at the same thresholds."""
    rows = []
    for base in ("cosine", "verifier"):
        off, on = points[base], points[f"{base}+guards"]
        rows.append([base, f"{on.hit_rate_pos - off.hit_rate_pos:+.4f}",
                     f"{on.correct_rate_pos - off.correct_rate_pos:+.4f}",
                     f"{off.false_hit_rate_neg:.4f} → {on.false_hit_rate_neg:.4f}",
                     f"{off.precision:.3f} → {on.precision:.3f}",
                     f"{off.precision_labelled:.3f} → {on.precision_labelled:.3f}"])
    return table(["scored by", "Δ hit rate (pos)", "Δ correct hits (pos)",
                  "false-hit rate (neg), off → on", "strict precision, off → on",
                  "labelled-only precision, off → on"], rows)


def mock_section(mock_path: Path, cache_dir: Path | None, verifier: Verifier,
                 chosen: dict[str, float], cos_grid: list[float],
                 ver_grid: list[float]) -> tuple[str, dict[str, Any]]:
    mock = load_mock_pairs(mock_path)
    emb = embed_texts(mock.texts, cache_dir)
    r = ev.retrieve(mock, emb, verifier.operating_point.top_k)
    pol = policies(r, mock.texts, emb, verifier)
    pts = at_points(r, pol, chosen)
    md = (f"GPTCache mock data ({len(mock)} pairs, all paraphrases; every `origin` inserted, "
          f"every `similar` asked), at the shipped thresholds:\n\n" + point_table(pts))
    cv = curves(r, pol, cos_grid, ver_grid)
    md += "\n\nHit rate on the mock data along the curves:\n\n" + table(
        ["policy", *[f"{p.threshold:g}" for p in cv["verifier+guards"]]],
        [[name, *[f"{p.hit_rate_pos:.3f}" for p in pts_]] for name, pts_ in cv.items()
         if name.startswith("verifier")]) + "\n\n" + table(
        ["policy", *[f"{p.threshold:g}" for p in cv["cosine+guards"]]],
        [[name, *[f"{p.hit_rate_pos:.3f}" for p in pts_]] for name, pts_ in cv.items()
         if name.startswith("cosine")])
    return md, {"shipped": {k: asdict(v) for k, v in pts.items()},
                "curves": {k: [asdict(p) for p in v] for k, v in cv.items()}}


def split_parts(pairs: PairSet, seed: int) -> tuple[PairSet, PairSet, PairSet]:
    fit, cal, rep = split_by_component(pairs, SPLIT_SHARES, seed)
    return fit, cal, rep


FALSE_HIT_NOTE = (
    "Where the false hits of `verifier+guards` come from: the query's own labelled partner "
    "(a pair labelled *not* a paraphrase) or an entry nobody labelled against the query. "
    "Most of the latter are paraphrases in fact (\"Where is God?\" / \"Where is god?\", "
    "\"How do I log out on Quora?\" / \"…in Quora?\") that QQP's labels put in different "
    "components; the protocol counts them wrong and no verifier judging meaning can avoid "
    "them, so they cap the measurable precision, more so as the cache grows:\n\n")
FALSE_HIT_HEADER = ["threshold", "hit rate (pos)", "precision, strict",
                    "precision, labelled-only", "hits", "false hits", "own labelled partner",
                    "unlabelled entry"]


def false_hit_rows(r: ev.Retrieval, pol: Policies, grid: list[float]) -> list[list[str]]:
    rows = []
    score, allowed = pol[SHIPPED_POLICY]
    for t in grid:
        chosen_idx = ev.choose(r, score, t, allowed)
        m = ev.point_metrics(r, chosen_idx, t)
        src = ev.false_hit_sources(r, chosen_idx, r.own_entry)
        rows.append([f"{t:g}", f"{m.hit_rate_pos:.3f}", f"{m.precision:.3f}",
                     f"{m.precision_labelled:.3f}", str(m.hits),
                     str(src["false_hits"]), str(src["own_pair"]), str(src["unlabelled_entry"])])
    return rows


def cosine_at_hit_rate(r: ev.Retrieval, pol: Policies, hit_rate: float) -> ev.PointMetrics:
    """Plain cosine (guards on, as shipped) at the threshold whose hit rate is nearest
    ``hit_rate``: the baseline any smarter scoring has to beat at equal hit rate."""
    score, allowed = pol["cosine+guards"]
    fine = ev.curve(r, score, FINE_COSINE_GRID, allowed)
    return min(fine, key=lambda p: abs(p.hit_rate_pos - hit_rate))


def summary_line(points: dict[str, ev.PointMetrics], baseline: ev.PointMetrics | None,
                 entries: int, left_out: int) -> str:
    """The shipped operating point against plain cosine at the same hit rate."""
    ship = points[SHIPPED_POLICY]
    line = (f"**Shipped** (`{SHIPPED_POLICY}`, threshold {ship.threshold:.3f}, {entries:,} "
            f"entries, {left_out:,} queries identical to an entry left out): hit rate "
            f"{ship.hit_rate_pos:.3f} on paraphrase queries at labelled-only precision "
            f"{ship.precision_labelled:.3f} (strict {ship.precision:.3f})")
    if baseline is not None:
        gain = ship.precision_labelled - baseline.precision_labelled
        line += (f"; plain cosine with guards at about the same hit rate "
                 f"({baseline.hit_rate_pos:.3f}, cosine {baseline.threshold:g}): labelled-only "
                 f"{baseline.precision_labelled:.3f} (strict {baseline.precision:.3f}), so the "
                 f"verifier gains {gain:+.3f} labelled-only precision at equal hit rate")
    return line + ".\n"


def _dump(points: dict[str, ev.PointMetrics]) -> dict[str, Any]:
    return {k: asdict(v) for k, v in points.items()}


def _dump_curves(cv: dict[str, list[ev.PointMetrics]]) -> dict[str, Any]:
    return {k: [asdict(p) for p in v] for k, v in cv.items()}


def run_split(pairs: PairSet, pairs_path: Path, emb: np.ndarray, *, fit_out: Path | None,
              verifier_path: Path | None, target: float, seed: int, ver_grid: list[float],
              cos_grid: list[float]) -> tuple[list[str], dict[str, Any], Verifier]:
    """Fit (optionally) on the fit part, calibrate on the calibrate part, report on the rest."""
    fit, cal, rep = split_parts(pairs, seed)
    # The fit part's questions are never asked, but its text_a stay in the cache during
    # calibration: the held-out half of QQP puts ~36k entries in the cache, a part alone
    # only ~7k, and every extra entry is one more chance of a false hit.
    distractors = np.unique(fit.a)
    md: list[str] = []
    if fit_out is not None:
        from margin.bench.lab.verifier_fit import FitConfig, fit_verifier

        verifier = fit_verifier(fit, emb, FitConfig(seed=seed),
                                {"split_seed": seed, "split_shares": list(SPLIT_SHARES)})
    else:
        verifier = Verifier.load(verifier_path)
        fitted = (verifier.meta.get("split_seed"), verifier.meta.get("split_shares"))
        if fitted != (seed, list(SPLIT_SHARES)):
            md.append(f"**Warning**: the verifier was fitted on another split {fitted}; the "
                      "report part may hold pairs it was fitted on.\n")
    k = verifier.operating_point.top_k
    r_cal = ev.retrieve(cal, emb, k, extra_entries=distractors)
    chosen = calibrate(r_cal, policies(r_cal, pairs.texts, emb, verifier), target)
    if fit_out is not None:
        verifier = with_operating_point(
            verifier, chosen[SHIPPED_POLICY], chosen["cosine+guards"],
            {"target_precision": target, "calibrated_on_pairs": len(cal),
             "fitted_on": pairs_path.name})
        verifier.save(fit_out)
    else:
        chosen = shipped_thresholds(verifier)
    settings = {
        "whole": ev.retrieve(rep, emb, k, extra_entries=np.unique(pairs.a)),
        "distractors": ev.retrieve(rep, emb, k, extra_entries=distractors),
        "alone": ev.retrieve(rep, emb, k),
    }
    pols = {name: policies(r, pairs.texts, emb, verifier) for name, r in settings.items()}
    points = {name: at_points(settings[name], pols[name], chosen) for name in settings}
    r_main, pol = settings["whole"], pols["whole"]
    cv = curves(r_main, pol, cos_grid, ver_grid)
    sources = false_hit_rows(r_main, pol, ver_grid)
    sizes = {"whole": len(np.unique(pairs.a)),
             "distractors": len(np.unique(np.concatenate([rep.a, distractors]))),
             "alone": len(np.unique(rep.a))}
    md += [
        f"QQP pairs `{pairs_path.name}` ({len(pairs):,} pairs) cut by connected component "
        f"into fit / calibrate / report parts of {len(fit):,} / {len(cal):,} / {len(rep):,} "
        f"pairs (seed {seed}; no question in two parts). The verifier is fitted on the fit "
        "part; each policy's threshold is the lowest reaching labelled-only precision "
        f"{target} on the calibrate part (with the fit part's `text_a` in the cache too); "
        "every number below is on the report part's queries, which neither step saw. "
        "A hit is correct when the entry is in the query's paraphrase class (label-1 "
        "components). *Hit rate* = positive queries answered (right or wrong); *correct "
        "hits* = answered with a paraphrase. A query whose text is itself an entry is the "
        f"exact cache's hit and is left out ({r_main.left_out:,} of the report part's "
        f"{len(rep):,} queries here). *Strict* precision counts every hit outside the query's "
        "class as wrong; *labelled-only* counts as wrong only hits a label-0 pair proves "
        "wrong (QQP leaves many true paraphrases unlabelled).\n",
        summary_line(points["whole"],
                     cosine_at_hit_rate(r_main, pol, points["whole"][SHIPPED_POLICY].hit_rate_pos),
                     sizes["whole"], r_main.left_out),
        "How many entries share the cache matters: the report part's queries asked against "
        f"every `text_a` of the file ({sizes['whole']:,} entries, the size of the held-out "
        "half of QQP), against the report and fit parts' "
        f"({sizes['distractors']:,}), and against the report part's alone ({sizes['alone']:,})."
        " Thresholds as calibrated:\n",
        *[f"{label}:\n\n" + point_table(points[name]) + "\n" for name, label in (
            ("whole", f"{sizes['whole']:,} entries"),
            ("distractors", f"{sizes['distractors']:,} entries"),
            ("alone", f"{sizes['alone']:,} entries"))],
        f"What the guards cost and save ({sizes['whole']:,} entries, thresholds as above):\n\n"
        + guard_effect(points["whole"]) + "\n",
        f"Precision / hit-rate curves ({sizes['whole']:,} entries):\n\n" + curve_tables(cv)
        + "\n",
        FALSE_HIT_NOTE + table(FALSE_HIT_HEADER, sources) + "\n",
    ]
    data = {"parts": {"fit": len(fit), "calibrate": len(cal), "report": len(rep)},
            "cache_entries": sizes, "thresholds": chosen,
            "points": {name: _dump(pts) for name, pts in points.items()},
            "curves": _dump_curves(cv), "false_hit_sources": sources}
    if fit_out is not None:
        data["fit_out"] = str(fit_out)
    return md, data, verifier


def run_whole(pairs: PairSet, pairs_path: Path, emb: np.ndarray, *, verifier_path: Path | None,
              ver_grid: list[float], cos_grid: list[float]) -> tuple[list[str], dict[str, Any],
                                                                    Verifier]:
    """Score a file the shipped verifier never saw, every pair, at the shipped thresholds."""
    verifier = Verifier.load(verifier_path)
    chosen = shipped_thresholds(verifier)
    r = ev.retrieve(pairs, emb, verifier.operating_point.top_k)
    pol = policies(r, pairs.texts, emb, verifier)
    pts = at_points(r, pol, chosen)
    cv = curves(r, pol, cos_grid, ver_grid)
    md = [summary_line(pts, cosine_at_hit_rate(r, pol, pts[SHIPPED_POLICY].hit_rate_pos),
                       len(np.unique(pairs.a)), r.left_out),
          f"All {len(pairs):,} pairs of `{pairs_path.name}` ({len(np.unique(pairs.a)):,} "
          "entries) scored with the shipped verifier and thresholds (no fitting, no split):"
          "\n\n" + point_table(pts) + "\n",
          "Guards:\n\n" + guard_effect(pts) + "\n",
          "Curves:\n\n" + curve_tables(cv) + "\n",
          FALSE_HIT_NOTE + table(FALSE_HIT_HEADER, false_hit_rows(r, pol, ver_grid))
          + "\n"]
    return md, {"thresholds": chosen, "points": {"whole": _dump(pts)},
                "curves": _dump_curves(cv)}, verifier


def run_benchmark(*, pairs: PairSet, pairs_path: Path, mock_path: Path | None, split: bool,
                  fit_out: Path | None, verifier_path: Path | None, target: float, seed: int,
                  cache_dir: Path | None, ver_grid: list[float], cos_grid: list[float],
                  latency_sizes: list[int], command: str,
                  encoder_dir: Path | None = None) -> tuple[str, dict[str, Any]]:
    """The whole benchmark; returns (markdown section, numbers)."""
    from margin.bench.report import header

    emb = embed_texts(pairs.texts, cache_dir)
    if split:
        body, data, verifier = run_split(pairs, pairs_path, emb, fit_out=fit_out,
                                         verifier_path=verifier_path, target=target, seed=seed,
                                         ver_grid=ver_grid, cos_grid=cos_grid)
    else:
        body, data, verifier = run_whole(pairs, pairs_path, emb, verifier_path=verifier_path,
                                         ver_grid=ver_grid, cos_grid=cos_grid)
    md = [header(command)] + body
    encoder = None
    if encoder_dir is not None and split:
        from margin.bench.lab.cache_compare import Contender, comparison_section
        from margin.cache.verifier import encoder_verifier

        tuned = encoder_verifier(encoder_dir)
        if tuned.meta.get("split_seed") != seed:
            raise InputError(f"{encoder_dir} was built on split seed "
                             f"{tuned.meta.get('split_seed')}, not {seed}: its report part "
                             "would hold pairs it was trained on")
        tuned_emb = embed_texts(pairs.texts, cache_dir, encoder_dir,
                                str(tuned.meta["encoder_checksum"])[:16])
        rep = split_parts(pairs, seed)[2]
        cmp_md, data["encoder"] = comparison_section(
            rep, pairs.texts, np.unique(pairs.a), Contender("bundled MiniLM", emb, verifier),
            [Contender("cache encoder", tuned_emb, tuned)])
        md.append("**Old and new side by side.** The cache encoder (`margin cache "
                  f"build-encoder`, folder `{encoder_dir.name}`) is MiniLM fine-tuned on the "
                  "fit part only, its verifier fitted on the fit part and calibrated on the "
                  "calibrate part, as above. " + cmp_md)
        encoder = (tuned_emb, tuned)
    data.update(pairs=str(pairs_path), n_pairs=len(pairs))
    if mock_path is not None and mock_path.exists():
        mock_md, data["mock"] = mock_section(mock_path, cache_dir, verifier,
                                             data["thresholds"], cos_grid, ver_grid)
        md.append(mock_md + "\n")
    if latency_sizes:
        from margin.cache.index import DEFAULT_EXACT_SEARCH_MAX_ENTRIES
        from margin.bench.lab.cache_latency import embedding_latency, index_latency

        rows = [embedding_latency(pairs.texts[:200])]
        idx_rows, build_s, agreement = index_latency(emb, pairs.texts, latency_sizes,
                                                     verifier=verifier)
        rows += idx_rows
        if encoder is not None:
            # Same model size and verifier shape: measured anyway, over the encoder's vectors.
            tuned_rows, _, _ = index_latency(encoder[0], pairs.texts, latency_sizes,
                                             verifier=encoder[1])
            rows += [replace(r, what=r.what.replace("verifier)",
                                                              "cache encoder's verifier)"))
                     for r in tuned_rows if r.what.startswith("full lookup")]
        md.append("Latency, one thread, one query at a time (the index switches to HNSW above "
                  f"{DEFAULT_EXACT_SEARCH_MAX_ENTRIES:,} entries in a scope; whatever HNSW "
                  "proposes is re-scored exactly):\n\n"
                  + table(["operation", "entries", "P50 ms", "P99 ms", "samples"],
                          [r.row() for r in rows])
                  + "\n\nInserting the entries (HNSW build included): "
                  + ", ".join(f"{n:,} entries {s:.1f} s" for n, s in build_s.items())
                  + ". HNSW's nearest entry is the exact nearest for "
                  + ", ".join(f"{a:.1%} of queries at {n:,} entries" for n, a in agreement.items())
                  + " (a miss costs a hit, never a wrong answer: the candidate is re-scored)."
                  + " Embedding latency is the bundled MiniLM in its default variant "
                  f"({_default_embedder_label()}) on this machine.\n")
        data["latency"] = [asdict(r) for r in rows]
        data["build_s"] = build_s
        data["hnsw_top1_agreement"] = agreement
    return "\n".join(md), data
