"""In-process embeddings upstream over ``LocalEmbedder`` (bundled all-MiniLM-L6-v2).

One ``embed`` call is one ``encode`` of all its inputs, which is what the batcher relies
on: a coalesced batch of requests costs the model one forward pass. The model variant
(``runtime``, ``quantize``, ``compile``) comes from the model's config.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from margin.errors import BadRequest
from margin.types import Call
from margin.upstreams.base import EmbedResult, Upstream
from margin.upstreams.config import LocalEmbeddingsModelConfig
from margin.embedding.minilm import EmbedderVariant, LocalEmbedder, shared_embedder


def variant_of(model: LocalEmbeddingsModelConfig) -> EmbedderVariant:
    return EmbedderVariant(runtime=model.runtime, quantize=model.quantize, compile=model.compile)


# The model's threads need the GIL for a moment between passes, while the event loop may hold
# it for the default 5 ms at a time (answering a batch's callers): the cores then sit idle.
# Handing it over every 0.5 ms instead, measured side by side at concurrency 64 on 2 cores:
# 278-311 vs 262-299 req/s and P99 267-348 vs 385-486 ms (three runs each).
GIL_SWITCH_INTERVAL_S = 0.0005


class SentenceTransformersUpstream(Upstream):
    config_class = LocalEmbeddingsModelConfig
    # The batcher may hand this upstream many callers' inputs in one call.
    batchable_embeddings = True
    model: LocalEmbeddingsModelConfig

    def __init__(self, model: LocalEmbeddingsModelConfig) -> None:
        super().__init__(model)
        self.variant = variant_of(model)
        self.embedder: LocalEmbedder | None = None

    async def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        if self.embedder is None:
            self.embedder = await asyncio.to_thread(shared_embedder, self.model.path,
                                                    self.variant, threads=self.model.n_threads)

    async def embed(self, inputs: list[Any], call: Call | None = None) -> EmbedResult:
        assert self.embedder is not None, "start() was not awaited"
        if not all(isinstance(t, str) for t in inputs):
            raise BadRequest("this local embeddings model takes text input, not token ids")
        embedder = self.embedder

        vectors, counts, compute_s = await asyncio.to_thread(embedder.encode_timed, inputs)
        return EmbedResult(vectors, sum(counts), counts, compute_s)
