"""``margin bench routing``: k-fold evaluation of routers the RouteLLM way.

Every router is scored on rows it never saw (group k-fold: near-duplicate prompts share a
fold). Metrics are computed per fold and averaged: APGR, CPT(50 %), CPT(80 %), the strong-call
share needed for 95 % of the strong model's quality, and the dollar cost per 1,000 requests at
that share. Baselines: random, prompt length, always-weak, always-strong, and the rules router
with its default weights. Latency (P50 per request) is measured for the rules router and for
the learned router with the embedding of one prompt included.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from margin.errors import InputError

if TYPE_CHECKING:
    from margin.routing.dataset import TokenCounts

DEFAULT_CACHE_DIR = "/tmp/margin-routing-cache"


@dataclass
class RouterResult:
    name: str
    apgr: float | None
    apgr_std: float | None
    cpt50: float | None
    cpt80: float | None
    share_95: float | None
    quality: float
    cost_per_1k_usd: float


def _fold_mean(values: list[float]) -> float:
    return float(np.mean(values))


def evaluate_scores(name: str, scores: np.ndarray, folds: np.ndarray, weak: np.ndarray,
                    strong: np.ndarray, tokens: "TokenCounts") -> RouterResult:
    """Per-fold scorecard and cost at the 95 %-quality share, averaged over folds."""
    from margin.routing.metrics import cost_at_share, scorecard

    cards, costs = [], []
    for f in np.unique(folds):
        m = folds == f
        card = scorecard(scores[m], weak[m], strong[m])
        cards.append(card)
        cost = cost_at_share(scores[m], card.share_95, tokens.input_tokens[m],
                             tokens.weak_output_tokens[m], tokens.strong_output_tokens[m])
        costs.append(cost / m.sum() * 1000)
    return RouterResult(
        name=name,
        apgr=_fold_mean([c.apgr for c in cards]),
        apgr_std=float(np.std([c.apgr for c in cards])),
        cpt50=_fold_mean([c.cpt50 for c in cards]),
        cpt80=_fold_mean([c.cpt80 for c in cards]),
        share_95=_fold_mean([c.share_95 for c in cards]),
        quality=_fold_mean([c.quality_at_95 for c in cards]),
        cost_per_1k_usd=_fold_mean(costs),
    )


SOURCE_PRIOR = "reference: the source's mean gain, in-sample (not a router)"


def source_prior_scores(sources: list[str], weak: np.ndarray, strong: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray | None:
    """Each row scored by the strong model's mean gain over all rows of its source (MMLU
    subject, GSM8K), measured on every row, scored ones included: knowledge no router has,
    kept as a yardstick for how much of the APGR the source alone explains."""
    if len(set(sources)) < 2:
        return None
    gain = strong.astype(np.float64) - weak.astype(np.float64)
    names, inverse = np.unique(np.asarray(sources), return_inverse=True)
    mean_gain = np.bincount(inverse, gain) / np.bincount(inverse)
    return mean_gain[inverse] + 1e-9 * rng.random(len(sources))  # random order within a source


def fixed_result(name: str, use_strong: bool, weak: np.ndarray, strong: np.ndarray,
                 tokens: "TokenCounts") -> RouterResult:
    from margin.routing.metrics import STRONG_PRICE, WEAK_PRICE

    price = STRONG_PRICE if use_strong else WEAK_PRICE
    out = tokens.strong_output_tokens if use_strong else tokens.weak_output_tokens
    cost = price.cost_usd(tokens.input_tokens, out).sum() / len(weak) * 1000
    return RouterResult(name, None, None, None, None, 1.0 if use_strong else 0.0,
                        float((strong if use_strong else weak).mean()), float(cost))


def _p50_ms(samples_s: list[float]) -> float:
    return statistics.median(samples_s) * 1000


def measure_latency(prompts: list[str], learned: object, n_samples: int,
                    seed: int) -> dict[str, float]:
    """P50 per request, one request at a time, as the gateway's router stage would call it."""
    from margin.routing.rules import RulesRouter

    rng = np.random.default_rng(seed)
    picks = [prompts[i] for i in rng.choice(len(prompts), size=min(n_samples, len(prompts)),
                                            replace=False)]
    bodies = [{"model": "auto", "messages": [{"role": "user", "content": p}]} for p in picks]
    rules = RulesRouter()
    for body in bodies[:20]:
        rules.strong_probability(body)
        learned.strong_probability(body)  # type: ignore[attr-defined]
    rules_s, learned_s = [], []
    for body in bodies:
        t0 = time.perf_counter()
        rules.strong_probability(body)
        t1 = time.perf_counter()
        learned.strong_probability(body)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        rules_s.append(t1 - t0)
        learned_s.append(t2 - t1)
    return {"rules_p50_ms": _p50_ms(rules_s), "learned_p50_ms": _p50_ms(learned_s),
            "samples": float(len(bodies)), "load_avg_1m": os.getloadavg()[0]}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(command: str, results: list[RouterResult], meta: dict[str, object],
                    latency: dict[str, float]) -> str:
    from margin.bench.report import header
    from margin.routing.metrics import STRONG_PRICE, WEAK_PRICE

    lines = [header(command), ""]
    lines.append(
        f"Rows: {meta['rows']} ({meta['groups']} groups after merging near-duplicates at "
        f"cosine ≥ {meta['duplicate_cosine']}), {meta['folds']}-fold; every score is on rows "
        f"the router never saw, averaged over folds. q_weak = {meta['q_weak']:.4f}, "
        f"q_strong = {meta['q_strong']:.4f}.")
    lines.append("")
    lines.append("| router | APGR (± std over folds) | CPT(50%) | CPT(80%) | strong share for "
                 "95% quality | quality there | USD per 1k requests there |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        apgr_cell = "—" if r.apgr is None else f"{r.apgr:.3f} ± {r.apgr_std:.3f}"
        lines.append(f"| {r.name} | {apgr_cell} | {_pct(r.cpt50)} | {_pct(r.cpt80)} | "
                     f"{_pct(r.share_95)} | {r.quality:.4f} | {r.cost_per_1k_usd:.3f} |")
    lines.append("")
    lines.append(
        f"Prices (USD per million tokens, input/output): weak {WEAK_PRICE.name} "
        f"{WEAK_PRICE.input_usd_per_mtok}/{WEAK_PRICE.output_usd_per_mtok}, strong "
        f"{STRONG_PRICE.name} {STRONG_PRICE.input_usd_per_mtok}/"
        f"{STRONG_PRICE.output_usd_per_mtok}. Tokens ≈ characters / 4; output tokens from the "
        f"stored responses (GSM8K rows) or {meta['default_output_tokens']} per MMLU row "
        f"(scored on one answer letter).")
    if any(r.name == SOURCE_PRIOR for r in results):
        lines.append("")
        lines.append(
            "The reference row is not a router: it orders rows by their source's average gain "
            "(strong correct − weak correct) measured on all rows, the scored ones included. "
            "It shows how much of the achievable APGR the subject alone carries; a router "
            "sees only the prompt, so beating it needs signal about a row's difficulty "
            "within its subject.")
    lines.append("")
    lines.append(f"Learned router: {meta['learned_config']}.")
    lines.append("")
    lines.append(
        f"Router latency, P50 per request over {int(latency['samples'])} prompts from the "
        f"file, one at a time: rules {latency['rules_p50_ms']:.3f} ms; learned "
        f"{latency['learned_p50_ms']:.2f} ms (MiniLM embedding of the prompt included, "
        f"{meta.get('embedder', 'torch-fp32')} runtime, intra-op threads "
        f"{int(latency.get('threads', 0)) or 'default'}; 1-minute load average "
        f"{latency.get('load_avg_1m', float('nan')):.1f} on {os.cpu_count()} cores while "
        f"measuring). Without the embedding (reused from the semantic cache) the learned "
        f"router's own work is features + n-grams + two dot products, well under 1 ms.")
    return "\n".join(lines) + "\n"


@click.command("routing")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL rows with prompt, weak_correct, strong_correct.")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=DEFAULT_CACHE_DIR,
              show_default=True, help="Prompt embeddings are cached here.")
@click.option("--latency-samples", type=click.IntRange(0, 100000), default=300,
              show_default=True)
@click.option("--default-output-tokens", type=click.FloatRange(0), default=1.0,
              show_default=True, help="Output tokens of rows without a stored response.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Intra-op threads of the embedding model [default: the runtime's, one per "
                   "core].")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write the section into docs/benchmarks.md.")
@click.option("--docs", "docs_path", default="docs/benchmarks.md", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def routing(data_path: str, folds: int, seed: int, cache_dir: str, latency_samples: int,
            default_output_tokens: float, threads: int | None, write: bool, docs_path: str,
            as_json: bool) -> None:
    """Evaluate the learned and rules routers against baselines on held-out rows."""
    from margin.bench.report import write_section
    from margin.routing.dataset import (
        cached_embeddings,
        correctness,
        feature_matrix,
        read_rows,
        token_counts,
    )
    from margin.routing.learned import LearnedRouter
    from margin.routing.rules import RulesRouter
    from margin.routing.train import (
        DEFAULT_TRAIN_CONFIG,
        Target,
        build_inputs,
        fit,
        group_folds,
        near_duplicate_groups,
        out_of_fold_scores,
        router_spec,
        threshold_for,
    )
    from margin.embedding.minilm import DEFAULT_EMBEDDING_MODEL, shared_embedder

    try:
        rows = read_rows(data_path)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
    weak, strong = correctness(rows)
    if strong.mean() <= weak.mean():
        click.echo("error: the strong model is not better than the weak one here", err=True)
        raise SystemExit(2)
    config = DEFAULT_TRAIN_CONFIG.model_copy(update={"folds": folds, "seed": seed})
    prompts = [r.prompt for r in rows]
    embedder = shared_embedder(threads=threads)
    embeddings = cached_embeddings([p[: config.embed_max_chars] for p in prompts],
                                   embedder.encode, cache_dir, DEFAULT_EMBEDDING_MODEL)
    features = feature_matrix(prompts)
    tokens = token_counts(rows, default_output_tokens)
    groups = near_duplicate_groups(embeddings, config.duplicate_cosine)
    fold_of = group_folds(groups, folds, seed)

    inputs = build_inputs(prompts, embeddings, features, config)
    learned_scores = out_of_fold_scores(inputs, weak, strong, fold_of, config)
    rules = RulesRouter()
    rules_scores = np.asarray([rules.strong_probability(p) for p in prompts])
    length_scores = np.asarray([len(p) for p in prompts], dtype=np.float64)
    rng = np.random.default_rng(seed)
    results = [
        evaluate_scores("learned (embedding + features)", learned_scores, fold_of, weak,
                        strong, tokens),
        evaluate_scores("rules (default weights)", rules_scores, fold_of, weak, strong, tokens),
        evaluate_scores("prompt length", length_scores, fold_of, weak, strong, tokens),
        evaluate_scores("random", rng.random(len(rows)), fold_of, weak, strong, tokens),
        fixed_result("always weak", False, weak, strong, tokens),
        fixed_result("always strong", True, weak, strong, tokens),
    ]
    reference = source_prior_scores([r.source for r in rows], weak, strong, rng)
    if reference is not None:
        results.append(evaluate_scores(SOURCE_PRIOR, reference, fold_of, weak, strong, tokens))

    latency = {"rules_p50_ms": float("nan"), "learned_p50_ms": float("nan"), "samples": 0.0}
    if latency_samples:
        # The router the gateway would load: every row, threshold from the held-out scores.
        final = fit(inputs, weak, strong, config)
        threshold, _ = threshold_for(Target(quality_fraction=0.95), learned_scores, weak, strong)
        spec = router_spec(final, config, threshold, learned_scores, embeddings.shape[1], {},
                           DEFAULT_EMBEDDING_MODEL)
        latency = measure_latency(prompts, LearnedRouter(spec, embedder=embedder),
                                  latency_samples, seed)
        latency["threads"] = float(threads or 0)
    meta: dict[str, object] = {
        "rows": len(rows), "groups": int(len(np.unique(groups))), "folds": folds,
        "embedder": embedder.variant.label,
        "duplicate_cosine": config.duplicate_cosine, "q_weak": float(weak.mean()),
        "q_strong": float(strong.mean()), "default_output_tokens": default_output_tokens,
        "learned_config": ", ".join(f"{k}={v}" for k, v in config.model_dump().items()
                                    if k in ("label", "c", "ngram_dim", "ngram_c",
                                             "embed_max_chars")),
    }
    command = "margin bench routing --data " + data_path + (
        f" --folds {folds}" if folds != 5 else "")
    markdown = render_markdown(command, results, meta, latency)
    if as_json:
        click.echo(json.dumps({"results": [asdict(r) for r in results], "meta": meta,
                               "latency": latency}, indent=2))
    else:
        click.echo(markdown)
    if write:
        path = write_section("routing", markdown, Path(docs_path))
        click.echo(f"wrote section 'routing' into {path}", err=True)
    sys.stdout.flush()
