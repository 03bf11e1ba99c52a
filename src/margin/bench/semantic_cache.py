"""``margin bench semantic-cache``: precision / hit-rate curves of the semantic cache on
labelled pairs, the guards' and the verifier's effect, and lookup latency.

Protocol (``shared/data/README.md``): insert every ``text_a``, ask every ``text_b``. The pairs
are cut by connected component into fit / calibrate / report parts (no question in two
parts). ``--fit-out`` fits the verifier on the fit part and picks its threshold on the
calibrate part; the tables report the held-out report part. ``--no-split`` scores a file the
shipped verifier never saw, all of it.

Rebuild the shipped verifier and the numbers in docs/benchmarks.md:

    margin bench semantic-cache --pairs ../shared/data/semantic-cache/qqp_pairs_tune.jsonl \\
        --fit-out src/margin/data/semantic_verifier.json --out docs/benchmarks.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from margin.bench.lab.cache_benchmark import COSINE_GRID, DEFAULT_TARGET_PRECISION, VERIFIER_GRID
from margin.bench.lab.pairs import load_pairs
from margin.errors import InputError, MarginError

_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "semantic-cache"


def _floats(text: str | None, name: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=name) from exc


@click.command("semantic-cache")
@click.option("--pairs", "pairs_path", type=click.Path(dir_okay=False, path_type=Path),
              default=_DATA / "qqp_pairs_tune.jsonl", show_default=True,
              help="QQP-style JSON lines {text_a, text_b, label}")
@click.option("--mock", "mock_path", type=click.Path(dir_okay=False, path_type=Path),
              default=_DATA / "gptcache_mock_data.json", show_default=True,
              help="GPTCache mock_data.json (all paraphrases); skipped if absent")
@click.option("--thresholds", default=None, help="verifier-score thresholds for the curves")
@click.option("--cosine-thresholds", default=None, help="cosine thresholds for the curves")
@click.option("--split/--no-split", default=True, show_default=True,
              help="cut into fit/calibrate/report parts; --no-split scores every pair with "
                   "the shipped verifier (for a file it never saw)")
@click.option("--fit-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="fit the verifier on the fit part, calibrate it, write the JSON here")
@click.option("--verifier", "verifier_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="verifier JSON to score (default: the shipped one)")
@click.option("--target-precision", default=DEFAULT_TARGET_PRECISION, show_default=True,
              type=click.FloatRange(0.5, 1.0), help="precision the calibration aims for")
@click.option("--seed", default=0, show_default=True, help="split seed")
@click.option("--embedding-cache", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/tmp/semcache"), show_default=True,
              help="where embeddings of the pairs are cached between runs")
@click.option("--encoder", "encoder_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="also score a cache encoder folder (`margin cache build-encoder`) side by "
                   "side with the bundled verifier and plain cosine (needs --split)")
@click.option("--latency/--no-latency", default=True, show_default=True)
@click.option("--latency-sizes", default="10000,100000", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the section into this markdown file (e.g. docs/benchmarks.md)")
@click.option("--json", "as_json", is_flag=True, help="print the numbers as JSON")
def semantic_cache(pairs_path: Path, mock_path: Path, thresholds: str | None,
                   cosine_thresholds: str | None, split: bool, fit_out: Path | None,
                   verifier_path: Path | None, target_precision: float, seed: int,
                   embedding_cache: Path, encoder_dir: Path | None, latency: bool, latency_sizes: str, out: Path | None,
                   as_json: bool) -> None:
    """Precision / hit-rate curves of the semantic cache on labelled question pairs."""
    from margin.bench.lab.cache_benchmark import run_benchmark

    if not pairs_path.exists():
        raise click.BadParameter(f"{pairs_path} does not exist", param_hint="--pairs")
    if fit_out is not None and not split:
        raise click.UsageError("--fit-out needs --split: fit and report on different parts")
    if encoder_dir is not None and not split:
        raise click.UsageError("--encoder needs --split: it is scored on the report part")
    ver_grid = _floats(thresholds, "--thresholds") or VERIFIER_GRID
    cos_grid = _floats(cosine_thresholds, "--cosine-thresholds") or COSINE_GRID
    sizes = [int(x) for x in _floats(latency_sizes, "--latency-sizes")] if latency else []
    try:
        pairs = load_pairs(pairs_path)
    except InputError as exc:
        raise click.BadParameter(exc.message, param_hint="--pairs") from exc
    argv = sys.argv[3:] if sys.argv[1:3] == ["bench", "semantic-cache"] else sys.argv[1:]
    command = "margin bench semantic-cache " + " ".join(argv)
    try:
        markdown, data = run_benchmark(
            pairs=pairs, pairs_path=pairs_path, mock_path=mock_path, split=split,
            fit_out=fit_out, verifier_path=verifier_path, target=target_precision, seed=seed,
            cache_dir=embedding_cache, ver_grid=ver_grid, cos_grid=cos_grid,
            latency_sizes=sizes, command=command.strip(), encoder_dir=encoder_dir)
    except MarginError as exc:  # an unusable --encoder or --verifier folder or file
        raise click.UsageError(exc.message) from exc
    click.echo(json.dumps(data, indent=1, default=float) if as_json else markdown)
    if out is not None:
        from margin.bench.report import write_section

        write_section("semantic-cache", markdown, out)
        click.echo(f"wrote section semantic-cache to {out}", err=True)
