"""``margin bench routing-unseen``: the learned router on sources it never saw, with and
without its region guard.

Each split holds out one whole group of sources (an MMLU subject group, or GSM8K), trains the
router and its region on the rest, and scores:

- *in distribution*: the training sources, out of fold (each fold scored by a router and a
  region fitted on the other folds), APGR averaged over folds;
- *unseen*: the held-out group, scored by the router and region fitted on all training rows.

With the guard, a prompt outside the region goes to the strong model (the ``strong``
policy): in the APGR ordering it comes before every prompt the router ranks, in random order
among its kind. Ties are averaged, so a guard that flags everything scores exactly 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import click
import numpy as np

from margin.errors import InputError

# MMLU's four subject groups (Hendrycks et al., 2021), GSM8K on its own.
SUBJECT_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology",
             "college_chemistry", "college_computer_science", "college_mathematics",
             "college_physics", "computer_security", "conceptual_physics",
             "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science",
             "high_school_mathematics", "high_school_physics", "high_school_statistics",
             "machine_learning"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence",
                   "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
                   "prehistory", "professional_law", "world_religions"),
    "social_sciences": ("econometrics", "high_school_geography",
                        "high_school_government_and_politics", "high_school_macroeconomics",
                        "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations",
                        "security_studies", "sociology", "us_foreign_policy"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts",
              "human_aging", "management", "marketing", "medical_genetics", "miscellaneous",
              "nutrition", "professional_accounting", "professional_medicine", "virology"),
}
GROUPS = (*SUBJECT_GROUPS, "gsm8k")


def group_of(source: str) -> str:
    """``mmlu/<subject>`` -> its subject group; ``gsm8k`` -> gsm8k; anything else: itself."""
    if source.startswith("mmlu/"):
        subject = source[5:]
        for group, subjects in SUBJECT_GROUPS.items():
            if subject in subjects:
                return group
    return source


@dataclass
class SplitResult:
    held_out: str
    train_rows: int
    unseen_rows: int
    in_apgr: float
    in_apgr_guarded: float
    in_flagged: float
    unseen_apgr: float
    unseen_apgr_guarded: float
    unseen_flagged: float


def _apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float:
    from margin.routing.metrics import apgr

    return apgr(scores, weak, strong)


def evaluate_split(held_out: str, groups: np.ndarray, texts: Sequence[str],
                   embeddings: np.ndarray, features: np.ndarray, weak: np.ndarray,
                   strong: np.ndarray, config) -> SplitResult:  # noqa: ANN001 (TrainConfig)
    from margin.routing.region import fit_region
    from margin.routing.region_report import guarded_scores
    from margin.routing.train import (build_inputs, fit, group_folds, near_duplicate_groups)

    train = groups != held_out
    test = ~train
    if not train.any() or not test.any():
        raise InputError(f"no rows to hold out as {held_out!r} (or none left to train on)")
    t_texts = [t for t, m in zip(texts, train) if m]
    inputs = build_inputs(t_texts, embeddings[train], features[train], config)
    w, s = weak[train], strong[train]
    dup = near_duplicate_groups(inputs.embeddings, config.duplicate_cosine)
    folds = group_folds(dup, config.folds, config.seed)
    in_plain, in_guard, flagged = [], [], 0
    for f in np.unique(folds):
        m = folds == f
        model = fit(inputs.rows(~m), w[~m], s[~m], config)
        scores = model.scores(inputs.rows(m))
        region = fit_region(inputs.embeddings[~m], folds[~m], config.region_centroids,
                            config.region_flag_share, config.seed)
        outside = region.outside(inputs.embeddings[m])
        flagged += int(outside.sum())
        in_plain.append(_apgr(scores, w[m], s[m]))
        in_guard.append(_apgr(guarded_scores(scores, outside), w[m], s[m]))
    final = fit(inputs, w, s, config)
    region = fit_region(inputs.embeddings, folds, config.region_centroids,
                        config.region_flag_share, config.seed)
    u_texts = [t for t, m in zip(texts, test) if m]
    u_inputs = build_inputs(u_texts, embeddings[test], features[test], config)
    u_scores = final.scores(u_inputs)
    u_out = region.outside(embeddings[test])
    return SplitResult(
        held_out=held_out, train_rows=int(train.sum()), unseen_rows=int(test.sum()),
        in_apgr=float(np.mean(in_plain)), in_apgr_guarded=float(np.mean(in_guard)),
        in_flagged=flagged / int(train.sum()),
        unseen_apgr=_apgr(u_scores, weak[test], strong[test]),
        unseen_apgr_guarded=_apgr(guarded_scores(u_scores, u_out), weak[test], strong[test]),
        unseen_flagged=float(u_out.mean()))


TEXT_KEYS = ("prompt", "text_a", "origin", "question")


def read_unlabelled(path: str, limit: int) -> list[str]:
    """Distinct prompts from a JSON list or JSON lines, each an object with one of
    ``TEXT_KEYS`` (QQP pairs, GPTCache's mock data, plain prompt files), at most ``limit``."""
    from pathlib import Path

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        objs = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    out: list[str] = []
    seen: set[str] = set()
    for i, obj in enumerate(objs, start=1):
        found = next((obj[k] for k in TEXT_KEYS if isinstance(obj, dict)
                      and isinstance(obj.get(k), str)), None)
        if found is None:
            raise InputError(f"{path}: item {i} has none of {', '.join(TEXT_KEYS)}")
        if found not in seen:
            seen.add(found)
            out.append(found)
        if len(out) >= limit:
            break
    return out


def render_markdown(command: str, results: list[SplitResult], meta: dict[str, object],
                    unlabelled: list[tuple[str, int, float]] = ()) -> str:
    from margin.bench.report import header

    lines = ["## Learned router on sources it never saw (region guard)", "", header(command), "",
             f"Router: the default learned router ({meta['config']}); region: "
             f"{meta['centroids']} centroids, threshold at the {meta['flag_share']:.0%} "
             f"quantile of held-out training rows' similarity; outside it, the strong model "
             f"(`outside_region: strong`). Random routing: APGR 0.500.", "",
             "| held out | train rows | unseen rows | in distribution: APGR / guarded / "
             "flagged | unseen: APGR / guarded / flagged |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r.held_out} | {r.train_rows} | {r.unseen_rows} | {r.in_apgr:.3f} / "
            f"{r.in_apgr_guarded:.3f} ({r.in_apgr_guarded - r.in_apgr:+.3f}) / "
            f"{r.in_flagged:.1%} | {r.unseen_apgr:.3f} / {r.unseen_apgr_guarded:.3f} / "
            f"{r.unseen_flagged:.1%} |")
    if unlabelled:
        lines += ["", "Prompts from sources with no correctness labels (no APGR), against the "
                      "region of a router trained on every labelled row:", "",
                  "| prompts | rows | outside the region |", "| --- | --- | --- |"]
        lines += [f"| {name} | {n} | {share:.1%} |" for name, n, share in unlabelled]
    if meta.get("chosen_on"):
        lines += ["", f"The region's parameters were chosen on the split holding out "
                      f"{meta['chosen_on']}; the other rows were not looked at while choosing."]
    return "\n".join(lines) + "\n"


@click.command("routing-unseen")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL rows with source, prompt, weak_correct, strong_correct.")
@click.option("--hold-out", "held_out", multiple=True, type=click.Choice(GROUPS),
              help="Groups to hold out, one split each [default: every group].")
@click.option("--centroids", type=click.IntRange(1, 4096), default=None,
              help="Region centroids [default: the training default].")
@click.option("--flag-share", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Share of held-out training rows the region may flag [default: the "
                   "training default].")
@click.option("--chosen-on", default=None,
              help="Say in the report which split the parameters were chosen on.")
@click.option("--unlabelled", "unlabelled_paths", multiple=True,
              type=click.Path(dir_okay=False),
              help="Prompts from another source (JSON or JSONL objects with prompt, text_a, "
                   "origin or question): the share the full-data region flags.")
@click.option("--unlabelled-rows", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False),
              default="/tmp/margin-routing-cache", show_default=True,
              help="Prompt embeddings are cached here.")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write the section into docs/benchmarks.md.")
@click.option("--docs", "docs_path", default="docs/benchmarks.md", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def routing_unseen(data_path: str, held_out: tuple[str, ...], centroids: int | None,
                   flag_share: float | None, chosen_on: str | None,
                   unlabelled_paths: tuple[str, ...], unlabelled_rows: int, cache_dir: str,
                   write: bool, docs_path: str, as_json: bool) -> None:
    """How the learned router ranks prompts from sources it never saw, with its guard."""
    import sys
    from pathlib import Path

    from margin.bench.report import write_section
    from margin.embedding.minilm import DEFAULT_EMBEDDING_MODEL, shared_embedder
    from margin.routing.dataset import cached_embeddings, correctness, feature_matrix, read_rows
    from margin.routing.train import DEFAULT_TRAIN_CONFIG

    try:
        rows = read_rows(data_path)
    except InputError as exc:
        click.echo(f"margin: error: {exc}", err=True)
        raise SystemExit(2) from exc
    update: dict[str, object] = {}
    if centroids is not None:
        update["region_centroids"] = centroids
    if flag_share is not None:
        update["region_flag_share"] = flag_share
    config = DEFAULT_TRAIN_CONFIG.model_copy(update=update)
    weak, strong = correctness(rows)
    prompts = [r.prompt for r in rows]
    groups = np.asarray([group_of(r.source) for r in rows])
    splits = list(held_out) or [g for g in GROUPS if (groups == g).any()]
    embeddings = cached_embeddings([p[: config.embed_max_chars] for p in prompts],
                                   shared_embedder().encode, cache_dir,
                                   DEFAULT_EMBEDDING_MODEL)
    features = feature_matrix(prompts)
    results = []
    for g in splits:
        try:
            results.append(evaluate_split(g, groups, prompts, embeddings, features, weak,
                                          strong, config))
        except InputError as exc:
            click.echo(f"margin: error: {exc}", err=True)
            raise SystemExit(2) from exc
        click.echo(f"held out {g}: {json.dumps(asdict(results[-1]))}", err=True)
    unlabelled = []
    if unlabelled_paths:
        from margin.routing.region import fit_region
        from margin.routing.train import group_folds, near_duplicate_groups

        folds = group_folds(near_duplicate_groups(embeddings, config.duplicate_cosine),
                            config.folds, config.seed)
        region = fit_region(embeddings, folds, config.region_centroids,
                            config.region_flag_share, config.seed)
        for path in unlabelled_paths:
            try:
                texts = read_unlabelled(path, unlabelled_rows)
            except InputError as exc:
                click.echo(f"margin: error: {exc}", err=True)
                raise SystemExit(2) from exc
            vectors = cached_embeddings([t[: config.embed_max_chars] for t in texts],
                                        shared_embedder().encode, cache_dir,
                                        DEFAULT_EMBEDDING_MODEL)
            unlabelled.append((Path(path).name, len(texts),
                               float(region.outside(vectors).mean())))
    meta = {"config": f"C={config.c}, n-grams {config.ngram_dim}, label {config.label}",
            "centroids": config.region_centroids, "flag_share": config.region_flag_share,
            "chosen_on": chosen_on}
    command = "margin bench routing-unseen " + " ".join(sys.argv[3:])
    md = render_markdown(command.strip(), results, meta, unlabelled)
    if as_json:
        click.echo(json.dumps({"meta": meta, "splits": [asdict(r) for r in results],
                               "unlabelled": [{"source": n, "rows": k, "outside_share": v}
                                              for n, k, v in unlabelled]}, indent=2))
    else:
        click.echo(md)
    if write:
        write_section("routing-unseen", md, docs_path)
