"""In-process embeddings upstream over ``LocalEmbedder`` (bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from margin.config import ModelConfig
from margin.errors import BadRequest
from margin.gateway.context import RequestContext, Response
from margin.upstreams.base import EmbedResult
from margin.upstreams.local_embeddings import LocalEmbedder, shared_embedder


class SentenceTransformersUpstream:
    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.embedder: LocalEmbedder | None = None

    async def start(self) -> None:
        if self.embedder is None:
            self.embedder = await asyncio.to_thread(shared_embedder, self.model.path)

    async def aclose(self) -> None:
        return None

    async def complete(self, ctx: RequestContext) -> Response:
        raise BadRequest(f"model {self.model.name!r} serves embeddings only")

    async def embed(self, inputs: list[Any], ctx: RequestContext | None = None) -> EmbedResult:
        assert self.embedder is not None, "start() was not awaited"
        if not all(isinstance(t, str) for t in inputs):
            raise BadRequest("this local embeddings model takes text input, not token ids")
        embedder = self.embedder

        def run() -> tuple[Any, list[int], float]:
            t0 = time.perf_counter()
            vectors = embedder.encode(inputs)
            counts = embedder.count_tokens(inputs)
            return vectors, counts, time.perf_counter() - t0

        vectors, counts, compute_s = await asyncio.to_thread(run)
        return EmbedResult(vectors, sum(counts), counts, compute_s)
