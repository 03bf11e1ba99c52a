"""Answering an embeddings request: the inputs go to an ``embed`` callable (the upstream's,
or the batcher's, which coalesces callers), and the vectors come back in OpenAI's shape."""

from __future__ import annotations

import base64
import time
from typing import Any, Awaitable, Callable

import numpy as np

from margin.types import Attempt, RequestContext, Response
from margin.upstreams.base import EmbedResult

Embed = Callable[[list[Any], RequestContext], Awaitable[EmbedResult]]


def embeddings_payload(model: str, result: EmbedResult, encoding_format: str | None) -> dict:
    data = []
    for i, vec in enumerate(result.vectors):
        if encoding_format == "base64":
            emb: Any = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        else:
            emb = np.asarray(vec, dtype=np.float32)  # orjson writes numpy arrays natively
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens,
                      "total_tokens": result.prompt_tokens}}


async def embed_via(embed: Embed, ctx: RequestContext) -> Response:
    """Answer ``ctx``'s embeddings request through ``embed``."""
    assert ctx.model is not None
    inputs = ctx.inputs if ctx.inputs is not None else ctx.body["input"]
    if not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    t0 = time.perf_counter()
    result = await embed(inputs, ctx)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    ctx.upstream_ms += elapsed_ms
    ctx.usage.prompt_tokens = result.prompt_tokens
    if result.compute_s is not None:
        ctx.compute_s = (ctx.compute_s or 0.0) + result.compute_s
    ctx.attempts.append(Attempt(ctx.model.name, ctx.model.provider, 200, elapsed_ms,
                                prompt_tokens=result.prompt_tokens))
    return Response(200, payload=embeddings_payload(ctx.model.name, result,
                                                     ctx.body.get("encoding_format")))
