"""``margin bench routing-unseen``: subject groups, prompt files of other sources, and one
split evaluated end to end on a slice of the shared rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from margin.bench.routing_unseen import GROUPS, SUBJECT_GROUPS, evaluate_split, group_of, \
    read_unlabelled
from margin.errors import InputError


def test_every_mmlu_subject_has_one_group():
    subjects = [s for group in SUBJECT_GROUPS.values() for s in group]
    assert len(subjects) == len(set(subjects)) == 57
    assert group_of("mmlu/professional_law") == "humanities"
    assert group_of("gsm8k") == "gsm8k" and "gsm8k" in GROUPS
    assert group_of("arc/easy") == "arc/easy"


def test_prompt_files_of_any_shape(tmp_path):
    jsonl = tmp_path / "qqp.jsonl"
    jsonl.write_text('{"text_a": "a?", "text_b": "b?"}\n{"text_a": "a?"}\n{"text_a": "c?"}\n')
    assert read_unlabelled(str(jsonl), 10) == ["a?", "c?"]  # distinct, in order
    listed = tmp_path / "mock.json"
    listed.write_text(json.dumps([{"origin": "x", "similar": "y"}, {"prompt": "z"}]))
    assert read_unlabelled(str(listed), 1) == ["x"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(InputError, match="bad.jsonl:1: not JSON"):
        read_unlabelled(str(bad), 10)
    shapeless = tmp_path / "shapeless.jsonl"
    shapeless.write_text('{"body": "no text key"}\n')
    with pytest.raises(InputError, match="item 1 has none of"):
        read_unlabelled(str(shapeless), 10)


def test_one_split_end_to_end_on_synthetic_topics():
    """Two known topics where the score is informative, one unseen topic where it is
    inverted: the guard flags the unseen topic and lifts its APGR to random or above."""
    from margin.routing.train import TrainConfig

    rng = np.random.default_rng(5)
    dim = 24
    centres = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:3]
    n = 300
    emb = np.concatenate([c[None, :] + 0.08 * rng.standard_normal((n, dim)) for c in centres])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = np.repeat(["a", "b", "unseen"], n)
    # Difficulty is along one feature; on the unseen topic the easy-looking prompts are the
    # hard ones, so a router trained on a and b ranks them backwards.
    difficulty = rng.random(3 * n)
    features = np.zeros((3 * n, 13), dtype=np.float32)
    features[:, 0] = np.where(groups == "unseen", 1 - difficulty, difficulty)
    weak = rng.random(3 * n) > difficulty
    strong = weak | (rng.random(3 * n) < 0.6)
    config = TrainConfig(ngram_dim=0, folds=3, region_centroids=16, region_flag_share=0.02)
    texts = [f"p{i}" for i in range(3 * n)]
    r = evaluate_split("unseen", groups, texts, emb, features, weak, strong, config)
    assert r.train_rows == 2 * n and r.unseen_rows == n
    assert r.unseen_apgr < 0.45            # the router alone is worse than random there
    assert r.unseen_flagged > 0.9          # and the guard knows it is out of its depth
    assert r.unseen_apgr_guarded >= 0.49
    assert abs(r.in_apgr_guarded - r.in_apgr) < 0.02 and r.in_flagged < 0.1
