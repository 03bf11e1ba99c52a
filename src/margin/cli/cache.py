"""``margin cache``: build what the semantic cache can run on besides the bundled files.

    margin cache build-encoder [--pairs PATH] [--out DIR] [--seed N] [--threads N]
                               [--max-rows N] [--embedding-cache DIR]

``build-encoder`` fine-tunes the bundled MiniLM on labelled question pairs into the
semantic cache's own encoder, fits and calibrates the verifier over its vectors, and
writes both into one folder (default ``~/.cache/margin/cache-encoder``; about 90 MB, so
built, not shipped). Point ``cache.semantic.encoder_path`` at it. The same pairs, seed and
thread count give the same weights and checksum; nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from margin.errors import InputError

_PAIRS = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "semantic-cache"
          / "qqp_pairs_tune.jsonl")


@click.group()
def cache() -> None:
    """Build the semantic cache's own encoder."""


@cache.command("build-encoder")
@click.option("--pairs", "pairs_path", type=click.Path(dir_okay=False, path_type=Path),
              default=_PAIRS, show_default=True,
              help="labelled question pairs, JSON lines {text_a, text_b, label}")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="folder to write  [default: ~/.cache/margin/cache-encoder]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="the split into fit / calibrate / report parts, and the training order")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True,
              help="torch threads; part of what makes two builds equal")
@click.option("--max-rows", type=click.IntRange(0), default=3000, show_default=True,
              help="paraphrase pairs trained on, after the seeded shuffle (0: all of the fit "
                   "part's, ~8,800 on the shared file; 3,000 take ~12 min on 2 busy cores)")
@click.option("--max-pairs", type=click.IntRange(1), default=None,
              help="use only the first N pairs of the file (a quick build)")
@click.option("--epochs", type=click.IntRange(1, 10), default=1, show_default=True)
@click.option("--target-precision", type=click.FloatRange(0.5, 1.0), default=0.96,
              show_default=True,
              help="labelled-only precision the threshold must reach on the calibrate part")
@click.option("--embedding-cache", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="keep the questions' vectors here, where `margin bench "
                                 "semantic-cache --embedding-cache` finds them")
def build_encoder(pairs_path: Path, out_dir: Path | None, seed: int, threads: int,
                  max_rows: int, max_pairs: int | None, epochs: int, target_precision: float,
                  embedding_cache: Path | None) -> None:
    """Fine-tune MiniLM on question pairs into the semantic cache's own encoder."""
    from margin.bench.lab.encoder_build import build_encoder as build
    from margin.bench.lab.encoder_tune import TuneConfig
    from margin.bench.lab.pairs import load_pairs, pairs_from_rows
    from margin.cache.verifier import default_encoder_dir
    from margin.embedding.minilm import bundled_minilm_path

    try:
        pairs = load_pairs(pairs_path)
    except InputError as exc:
        raise click.BadParameter(exc.message, param_hint="--pairs") from exc
    if max_pairs is not None and max_pairs < len(pairs):
        pairs = pairs_from_rows([(pairs.texts[a], pairs.texts[b], int(lab)) for a, b, lab in
                                 zip(pairs.a[:max_pairs].tolist(), pairs.b[:max_pairs].tolist(),
                                     pairs.label[:max_pairs].tolist())])
    out_dir = out_dir or default_encoder_dir()
    started = time.monotonic()

    def progress(step: int, steps: int, loss: float) -> None:
        if step == steps or step % 25 == 0:
            click.echo(f"step {step}/{steps} loss {loss:.4f} "
                       f"({time.monotonic() - started:.0f} s)", err=True)

    try:
        built = build(pairs, pairs_path, out_dir, base_dir=bundled_minilm_path(), seed=seed,
                      target=target_precision,
                      tune=TuneConfig(epochs=epochs, seed=seed, threads=threads,
                                      max_rows=max_rows or None),
                      embedding_cache=embedding_cache, progress=progress)
    except ValueError as exc:
        raise InputError(f"{pairs_path}: {exc}") from exc
    op = built.verifier.operating_point
    click.echo(f"wrote {out_dir}")
    click.echo(f"weights sha256 {built.checksum}")
    click.echo(f"trained on {built.info['training']['rows']:,} paraphrase pairs; verifier "
               f"threshold {op.threshold:g}, cosine-only threshold {op.cosine_only_threshold:g}")
    click.echo(f"use it: cache.semantic.encoder_path: {out_dir}")
