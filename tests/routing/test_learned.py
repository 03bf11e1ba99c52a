"""The learned router: train → save → load → score, and the ``margin route`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from margin.cli.route import route
from margin.errors import ConfigError
from margin.routing.learned import LearnedRouter, load_router
from margin.routing.metrics import apgr
from margin.routing.rules import RulesRouter

REPO = Path(__file__).resolve().parents[2]
TUNE = REPO.parent / "shared" / "data" / "routing" / "routellm_gsm8k_mmlu_tune.jsonl"


def _has_minilm() -> bool:
    try:
        from margin.embedding.minilm import bundled_minilm_path

        return bundled_minilm_path().exists()
    except Exception:
        return False


needs_data = pytest.mark.skipif(not TUNE.exists(), reason=f"routing rows not found at {TUNE}")
needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="the bundled MiniLM is not installed")


def _subset(n: int) -> list[dict]:
    rows = [json.loads(line) for line in TUNE.read_text().split("\n") if line.strip()]
    picked = rows[:: max(1, len(rows) // n)][:n]
    return [{k: r[k] for k in ("prompt", "weak_correct", "strong_correct", "source")}
            for r in picked]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    if not TUNE.exists():
        pytest.skip(f"routing rows not found at {TUNE}")
    if not _has_minilm():
        pytest.skip("the bundled MiniLM is not installed")
    tmp = tmp_path_factory.mktemp("router")
    rows = _subset(200)
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "router.json"
    result = CliRunner().invoke(route, ["train", "--data", str(data), "--out", str(out),
                                        "--folds", "3", "--target-strong-share", "0.3",
                                        "--json"])
    assert result.exit_code == 0, result.output
    return {"rows": rows, "path": out, "report": json.loads(result.stdout)}


@needs_data
@needs_minilm
def test_train_writes_a_small_loadable_file(trained):
    spec = json.loads(trained["path"].read_text())
    assert spec["format"] == "margin-router" and spec["kind"] == "learned"
    assert spec["embedding_dim"] == 384 and len(spec["score_quantiles"]) == 101
    assert trained["path"].stat().st_size < 200_000
    report = trained["report"]
    assert report["rows"] == 200 and 0.25 <= report["strong_share"] <= 0.35
    assert 0.0 < report["heldout_apgr"] < 1.5
    router = load_router(trained["path"])
    assert isinstance(router, LearnedRouter) and router.threshold == spec["threshold"]


@needs_data
@needs_minilm
def test_loaded_router_scores_like_the_batch_path_and_learns_something(trained):
    router = load_router(trained["path"])
    rows = trained["rows"]
    prompts = [r["prompt"] for r in rows]
    batch = router.strong_probabilities(prompts)
    assert batch.shape == (200,) and np.all((batch >= 0) & (batch <= 1))
    one = [router.strong_probability({"messages": [{"role": "user", "content": p}]})
           for p in prompts[:5]]
    assert np.allclose(one, batch[:5], atol=1e-5)
    # In-sample (rows it was trained on): the ranking must beat random clearly.
    weak = np.array([r["weak_correct"] for r in rows], dtype=float)
    strong = np.array([r["strong_correct"] for r in rows], dtype=float)
    assert apgr(batch, weak, strong) > 0.6
    # Three tiers: boundaries increase and end at the threshold.
    bounds = router.tier_boundaries(3)
    assert len(bounds) == 2 and bounds[0] <= bounds[1] == router.threshold
    tiers = [router.choose_tier(p, 3) for p in prompts[:30]]
    assert set(tiers) <= {0, 1, 2}


@needs_data
@needs_minilm
def test_score_cli_keeps_input_order(trained):
    router = load_router(trained["path"])
    prompts = [r["prompt"] for r in trained["rows"][:12]]
    lines = []
    for i, p in enumerate(prompts):
        if i % 2:
            lines.append(json.dumps({"id": i, "messages": [{"role": "user", "content": p}]}))
        else:
            lines.append(json.dumps({"id": i, "prompt": p}))
    result = CliRunner().invoke(route, ["score", "--router", str(trained["path"])],
                                input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == list(range(12))
    expected = router.strong_probabilities(prompts)
    assert np.allclose([o["strong_probability"] for o in out], expected, atol=1e-5)
    assert all(o["strong"] == (o["strong_probability"] >= router.threshold) for o in out)


def test_score_cli_rejects_a_bad_line_with_its_number(tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"kind": "rules", "threshold": 0.5}))
    good = json.dumps({"prompt": "What is the capital of France?"})
    for bad, why in (("{not json", "not JSON"), (json.dumps({"text": "x"}), "prompt"),
                     (json.dumps([1, 2]), "object")):
        result = CliRunner().invoke(route, ["score", "--router", str(rules_file)],
                                    input=f"{good}\n{good}\n{bad}\n{good}\n")
        assert result.exit_code == 2
        assert "line 3" in result.stderr and why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_score_cli_with_a_rules_router_file(tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"kind": "rules", "weights": {"questions": 0.5}}))
    prompts = ["What is the capital of France?", "Prove step by step that " + "x " * 400]
    result = CliRunner().invoke(route, ["score", "--router", str(rules_file)],
                                input="".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    router = load_router(rules_file)
    assert isinstance(router, RulesRouter)
    assert [o["strong_probability"] for o in out] == pytest.approx(
        [router.strong_probability(p) for p in prompts], abs=1e-6)
    assert [o["strong"] for o in out] == [False, True]


def test_bad_router_files_are_config_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError):
        load_router(missing)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError):
        load_router(other)
    result = CliRunner().invoke(route, ["score", "--router", str(other)], input="")
    assert result.exit_code == 2


def test_train_cli_rejects_bad_rows(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "a", "weak_correct": True, "strong_correct": True})
                    + "\n" + json.dumps({"prompt": "b", "weak_correct": "maybe",
                                         "strong_correct": True}) + "\n")
    result = CliRunner().invoke(route, ["train", "--data", str(data), "--out",
                                        str(tmp_path / "r.json")])
    assert result.exit_code == 2 and ":2:" in result.stderr
    both = CliRunner().invoke(route, ["train", "--data", str(data), "--out", "x.json",
                                      "--target-strong-share", "0.2", "--target-quality", "0.9"])
    assert both.exit_code == 2


@needs_data
@needs_minilm
def test_train_reports_held_out_sources_inside_and_outside_the_region(tmp_path):
    rows = _subset(240)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "router.json"
    result = CliRunner().invoke(route, ["train", "--data", str(data), "--out", str(out),
                                        "--folds", "3", "--hold-out-source", "gsm8k",
                                        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    held = report["held_out_sources"]
    n_gsm8k = sum(r["source"] == "gsm8k" for r in rows)
    assert held["sources"] == ["gsm8k"] and held["rows"] == n_gsm8k
    assert report["rows"] == len(rows) - n_gsm8k  # trained without them
    assert 0.0 <= held["flagged_share"] <= 1.0
    assert held["apgr"] is None or 0.0 <= held["apgr"] <= 1.5
    spec = json.loads(out.read_text())
    assert spec["region"]["k"] >= 1 and 0 < spec["region"]["min_similarity"] < 1
    # A prefix no row has is a clear error, not an empty report.
    bad = CliRunner().invoke(route, ["train", "--data", str(data), "--out", str(out),
                                     "--hold-out-source", "arc/"])
    assert bad.exit_code == 2 and "no row's source starts with arc/" in bad.output
