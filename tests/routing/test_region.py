"""The learned router's region: centroids of its training prompts and the threshold below
which a prompt counts as unlike all of them."""

from __future__ import annotations

import numpy as np
import pytest

from margin.errors import ConfigError
from margin.routing.metrics import apgr
from margin.routing.region import Region, centroid_count, fit_region, spherical_kmeans
from margin.routing.region_report import guarded_scores


def _cluster(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centre[None, :] + spread * rng.standard_normal((n, len(centre)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def topics() -> dict[str, np.ndarray]:
    """Three training topics and one the router never saw, as unit vectors in 32 dims."""
    rng = np.random.default_rng(7)
    centres = np.linalg.qr(rng.standard_normal((32, 32)))[0][:4]  # orthonormal directions
    return {"train": np.concatenate([_cluster(rng, c, 400, 0.08) for c in centres[:3]]),
            "same": np.concatenate([_cluster(rng, c, 100, 0.08) for c in centres[:3]]),
            "unseen": _cluster(rng, centres[3], 200, 0.08)}


def test_kmeans_finds_the_topics(topics):
    centroids = spherical_kmeans(topics["train"], 3, seed=0)
    assert centroids.shape == (3, 32)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # Each training row's nearest centroid is its own topic's: 400 rows per centroid.
    counts = np.bincount(np.argmax(topics["train"] @ centroids.T, axis=1), minlength=3)
    assert sorted(counts.tolist()) == [400, 400, 400]


def test_region_flags_the_unseen_topic_and_about_its_share_of_the_known_ones(topics):
    folds = np.arange(len(topics["train"])) % 5
    region = fit_region(topics["train"], folds, k=12, flag_share=0.05)
    assert region.outside(topics["unseen"]).mean() == 1.0
    # Held-out rows set the threshold: new rows of known topics fall below it about as
    # often as flag_share says.
    assert 0.0 < region.outside(topics["same"]).mean() < 0.15


def test_region_round_trips_through_the_router_file(topics):
    folds = np.arange(len(topics["train"])) % 3
    region = fit_region(topics["train"], folds, k=8, flag_share=0.02)
    spec = region.to_spec()
    again = Region.from_spec(spec, dim=32)
    assert again.min_similarity == region.min_similarity
    # float16 in the file: similarities agree to ~1e-3.
    assert np.allclose(again.similarity(topics["same"]), region.similarity(topics["same"]),
                       atol=2e-3)
    with pytest.raises(ConfigError, match="embedding dimension"):
        Region.from_spec(spec, dim=384)
    with pytest.raises(ConfigError, match="invalid region"):
        Region.from_spec({"k": 2}, dim=32)


def test_few_rows_get_few_centroids():
    assert centroid_count(120, 256) == 6
    assert centroid_count(10, 256) == 1
    assert centroid_count(100_000, 256) == 256


def test_a_guard_that_flags_everything_routes_like_random():
    rng = np.random.default_rng(3)
    weak = rng.random(500) < 0.5
    strong = weak | (rng.random(500) < 0.4)
    scores = rng.random(500)
    assert apgr(guarded_scores(scores, np.ones(500, dtype=bool)), weak, strong) == \
        pytest.approx(0.5, abs=1e-12)
    # Flagging nothing leaves the router's order as it was.
    none = np.zeros(500, dtype=bool)
    assert apgr(guarded_scores(scores, none), weak, strong) == apgr(scores, weak, strong)
