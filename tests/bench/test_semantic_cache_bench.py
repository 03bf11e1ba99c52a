"""`margin bench semantic-cache` end to end on a tiny pairs file, and its input errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from margin.bench.semantic_cache import semantic_cache

PAIRS = [
    ("How can I stop procrastinating?", "How do I stop procrastinating?", 1),
    ("What is the best way to learn guitar?", "What's the best way to learn the guitar?", 1),
    ("How do I lose 5 kg in a month?", "How do I lose 15 kg in a month?", 0),
    ("Is it safe to drink coffee during pregnancy?",
     "Is it not safe to drink coffee during pregnancy?", 0),
    ("How do I make a website?", "How do I make a mobile app?", 0),
    ("Where is God?", "Where is God?", 1),
]


def test_scores_a_pairs_file_with_the_shipped_verifier(tmp_path) -> None:
    pytest.importorskip("sentence_transformers")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n"
                             for a, b, y in PAIRS))
    out = tmp_path / "bench.md"
    result = CliRunner().invoke(semantic_cache, [
        "--pairs", str(pairs), "--no-split", "--no-latency", "--mock", str(tmp_path / "none"),
        "--embedding-cache", str(tmp_path / "emb"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    shipped = data["points"]["whole"]["verifier+guards"]
    # The paraphrases (and the identical question) hit; the number / negation changes and the
    # unrelated question do not.
    assert shipped["hit_rate_pos"] == 1.0 and shipped["precision"] == 1.0
    assert shipped["false_hit_rate_neg"] == 0.0
    assert "<!-- bench:semantic-cache -->" in out.read_text()


def test_bad_input_exits_2(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "x"}\n')
    runner = CliRunner()
    assert runner.invoke(semantic_cache, ["--pairs", str(bad), "--no-latency"]).exit_code == 2
    assert runner.invoke(semantic_cache, ["--pairs", str(tmp_path / "missing.jsonl")]).exit_code == 2
    assert runner.invoke(semantic_cache, ["--pairs", str(bad), "--no-split",
                                          "--fit-out", str(tmp_path / "v.json")]).exit_code == 2


def test_scores_a_cache_encoder_beside_the_shipped_verifier(tmp_path) -> None:
    from tests.cli.tiny_encoder import PAIRS as QQP, TINY_PAIRS, build_tiny

    built = build_tiny(tmp_path / "enc")
    assert built.exit_code == 0, built.output
    pairs = tmp_path / "pairs.jsonl"  # the very pairs the encoder was built from
    pairs.write_text("".join(QQP.read_text().splitlines(keepends=True)[:TINY_PAIRS]))
    args = ["--pairs", str(pairs), "--no-latency", "--mock", str(tmp_path / "none"),
            "--embedding-cache", str(tmp_path / "emb"), "--encoder", str(tmp_path / "enc")]
    result = CliRunner().invoke(semantic_cache, args + ["--json"])
    assert result.exit_code == 0, result.output
    encoder = json.loads(result.stdout)["encoder"]
    assert set(encoder["shipped"]) == {"bundled MiniLM", "cache encoder"}
    assert {"cache encoder: cosine+guards", "cache encoder: verifier+guards"} <= set(
        encoder["curves"])
    # Another split seed would report on pairs the encoder was trained on: refused.
    assert CliRunner().invoke(semantic_cache, args + ["--seed", "1"]).exit_code == 2
