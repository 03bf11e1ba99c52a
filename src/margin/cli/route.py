"""``margin route``: train a learned router, and score prompts with any router file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from margin.errors import InputError


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


@click.group("route")
def route() -> None:
    """Train and evaluate request routers (small vs large model)."""


@route.command("train")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL rows with prompt, weak_correct, strong_correct.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write router.json.")
@click.option("--target-strong-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="Threshold so that this share of requests goes to the strong model.")
@click.option("--target-quality", type=click.FloatRange(0.0, 1.5), default=None,
              help="Threshold for this fraction of the strong model's quality "
                   "(measured on held-out rows; default 0.95).")
@click.option("--label", type=click.Choice(["gain", "strong_wins", "weak_wrong"]),
              default="gain", show_default=True, help="What the classifier predicts.")
@click.option("--model", "model_kind", type=click.Choice(["logistic", "mlp"]),
              default="logistic", show_default=True)
@click.option("--c", "c_value", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Inverse L2 strength (default: the tuned value).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="Folds for the held-out scores the threshold is set on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache prompt embeddings here (reused by later runs on the same rows).")
@click.option("--region-centroids", type=click.IntRange(0, 4096), default=None,
              help="Centroids that describe the training prompts (0: no region, nothing is "
                   "ever flagged) [default: 256].")
@click.option("--region-flag-share", type=click.FloatRange(0.0, 1.0, max_open=True),
              default=None, help="Share of held-out training prompts allowed to fall outside "
                                 "the region; sets its threshold [default: 0.02].")
@click.option("--hold-out-source", "hold_out", multiple=True, metavar="PREFIX",
              help="Leave rows whose source starts with PREFIX out of training and report "
                   "how the router does on them, inside and outside its region "
                   "(repeatable; e.g. gsm8k, mmlu/college_).")
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train_command(data_path: str, out_path: str, target_strong_share: float | None,
                  target_quality: float | None, label: str, model_kind: str,
                  c_value: float | None, folds: int, seed: int, cache_dir: str | None,
                  region_centroids: int | None, region_flag_share: float | None,
                  hold_out: tuple[str, ...], as_json: bool) -> None:
    """Train a learned router and write it as a small JSON file the gateway loads."""
    from margin.routing.dataset import (
        cached_embeddings,
        correctness,
        feature_matrix,
        read_rows,
    )
    from margin.routing.train import DEFAULT_TRAIN_CONFIG, Target, train_router

    if target_strong_share is not None and target_quality is not None:
        raise click.UsageError("give --target-strong-share or --target-quality, not both")
    try:
        target = (Target(strong_share=target_strong_share) if target_strong_share is not None
                  else Target(quality_fraction=target_quality if target_quality is not None
                              else 0.95))
        rows = read_rows(data_path)
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    unseen = [r for r in rows if hold_out and r.source.startswith(hold_out)]
    if hold_out:
        if not unseen:
            _fail(f"{data_path}: no row's source starts with {' or '.join(hold_out)}")
        rows = [r for r in rows if not r.source.startswith(hold_out)]
        if not rows:
            _fail(f"{data_path}: every row is held out; nothing is left to train on")
    weak, strong = correctness(rows)
    if strong.mean() <= weak.mean():
        _fail(f"{data_path}: the strong model is not better than the weak one on these rows")
    if min(int((weak != strong).sum()), len(rows)) < 2 * folds:
        _fail(f"{data_path}: too few rows where the two models disagree to train on")
    overrides: dict[str, Any] = {"label": label, "model": model_kind, "folds": folds,
                                 "seed": seed}
    if c_value is not None:
        overrides["c"] = c_value
    if region_centroids is not None:
        overrides["region_centroids"] = region_centroids
    if region_flag_share is not None:
        overrides["region_flag_share"] = region_flag_share
    config = DEFAULT_TRAIN_CONFIG.model_copy(update=overrides)

    from margin.embedding.minilm import DEFAULT_EMBEDDING_MODEL, shared_embedder

    embedder = shared_embedder()
    prompts = [r.prompt for r in rows]
    embeddings = cached_embeddings([p[: config.embed_max_chars] for p in prompts],
                                   embedder.encode, cache_dir, DEFAULT_EMBEDDING_MODEL)
    spec, report = train_router(prompts, embeddings, feature_matrix(prompts), weak, strong,
                                config, target, DEFAULT_EMBEDDING_MODEL)
    if unseen:
        spec["training"]["held_out_sources"] = _unseen_report(
            spec, unseen, hold_out, embedder, cache_dir, config.embed_max_chars)
    Path(out_path).write_text(json.dumps(spec, separators=(",", ":")) + "\n")
    if as_json:
        click.echo(json.dumps({"out": out_path, **spec["training"]}, indent=2))
        return
    click.echo(f"rows {report.rows} (groups {report.groups}), q_weak {report.q_weak:.4f}, "
               f"q_strong {report.q_strong:.4f}")
    click.echo(f"held-out ({report.folds}-fold): APGR {report.oof_apgr:.4f}, "
               f"CPT(50%) {report.oof_cpt50:.1%}, CPT(80%) {report.oof_cpt80:.1%}")
    click.echo(f"threshold {report.threshold:.6f}: strong share {report.strong_share:.1%}, "
               f"expected quality {report.expected_quality:.4f}")
    region = spec.get("region")
    if region:
        click.echo(f"region: {region['k']} centroids; {region['heldout_flag_share']:.1%} of "
                   f"held-out training rows fall outside it (similarity < "
                   f"{region['min_similarity']:.3f})")
    seen = spec["training"].get("held_out_sources")
    if seen:
        def num(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"
        click.echo(f"held-out sources ({', '.join(hold_out)}): {seen['rows']} rows, "
                   f"{num(seen['flagged_share'])} outside the region; APGR "
                   f"{num(seen['apgr'])} as trained, {num(seen['apgr_guarded'])} with "
                   f"outside_region: strong; inside the region {num(seen.get('apgr_inside'))}, "
                   f"outside {num(seen.get('apgr_outside'))} (random 0.5)")
    click.echo(f"wrote {out_path}")


def _unseen_report(spec: dict[str, Any], rows: list[Any], prefixes: tuple[str, ...],
                   embedder: Any, cache_dir: str | None, max_chars: int) -> dict[str, Any]:
    from margin.embedding.minilm import DEFAULT_EMBEDDING_MODEL
    from margin.routing.dataset import cached_embeddings, correctness, feature_matrix
    from margin.routing.learned import LearnedRouter
    from margin.routing.region_report import unseen_report

    prompts = [r.prompt for r in rows]
    embeddings = cached_embeddings([p[:max_chars] for p in prompts], embedder.encode,
                                   cache_dir, DEFAULT_EMBEDDING_MODEL)
    weak, strong = correctness(rows)
    router = LearnedRouter(spec, embedder=embedder)
    report = unseen_report(router, embeddings, feature_matrix(prompts),
                           [p[:max_chars] for p in prompts], weak, strong)
    return {"sources": list(prefixes), **report}


def _parse_request(line: str, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        _fail(f"line {number}: not JSON ({exc.msg})")
    if not isinstance(obj, dict):
        _fail(f"line {number}: expected a JSON object")
    if isinstance(obj.get("prompt"), str):
        return obj
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return obj
    _fail(f"line {number}: needs 'prompt' (a string) or 'messages' (a list of objects)")


@route.command("score")
@click.option("--router", "router_path", required=True, type=click.Path(dir_okay=False),
              help="router.json from `margin route train`, or a {\"kind\": \"rules\"} file.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=64, show_default=True)
def score_command(router_path: str, batch_size: int) -> None:
    """Read JSON lines (prompt or messages) on stdin; print strong_probability per line.

    Output is one JSON object per input line, in input order:
    {"strong_probability": 0.73, "strong": true} (plus "id" when the input line had one,
    and "region_similarity" and "outside_region" when the router file has a region: an
    outside prompt is unlike everything the router was trained on, and the gateway routes
    it by the route's outside_region policy).
    """
    from margin.routing.learned import LearnedRouter, load_router

    try:
        router = load_router(router_path)
    except InputError as exc:
        _fail(str(exc))
    requests: list[dict[str, Any]] = []
    for number, line in enumerate(sys.stdin, start=1):
        if line.strip():
            requests.append(_parse_request(line, number))
    similarity = None
    if isinstance(router, LearnedRouter):
        probabilities, similarity = router.assess_many(requests, batch_size=batch_size)
        threshold = router.threshold
    else:
        probabilities = np.asarray([router.strong_probability(r) for r in requests])
        threshold = router.tier_boundaries(2)[0]
    out = sys.stdout
    for i, (request, p) in enumerate(zip(requests, probabilities)):
        record: dict[str, Any] = {}
        if "id" in request:
            record["id"] = request["id"]
        record["strong_probability"] = round(float(p), 6)
        record["strong"] = bool(p >= threshold)
        if similarity is not None:
            assert isinstance(router, LearnedRouter) and router.region is not None
            record["region_similarity"] = round(float(similarity[i]), 4)
            record["outside_region"] = bool(similarity[i] < router.region.min_similarity)
        out.write(json.dumps(record) + "\n")
    out.flush()
