"""The gateway's long-lived parts, built once from settings: upstreams, prices, ledger,
metrics and the folded pipeline. Stages get this object at build time."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import numpy as np

from margin.config import ModelConfig, Settings
from margin.errors import BadRequest, NotFound
from margin.gateway import pipeline
from margin.types import Attempt, RequestContext, Response
from margin.gateway.stages import build_stages
from margin.metering.ledger import LedgerWriter
from margin.metering.pricing import PriceBook
from margin.observe.metrics import GatewayMetrics
from margin.upstreams.base import EmbedResult, Upstream
from margin.upstreams.registry import build_upstream

log = logging.getLogger("margin.gateway")


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


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelConfig] = {m.name: m for m in settings.models}
        self.upstreams: dict[str, Upstream] = {m.name: build_upstream(m) for m in settings.models}
        self.prices = PriceBook(settings.models, settings.pricing)
        self.metrics = GatewayMetrics()
        self.ledger = LedgerWriter(settings.ledger)
        self.metrics.watch_ledger(self._ledger_counts)
        # Names a client may ask for besides models (routes add themselves here).
        self.aliases: dict[str, str] = {}
        # /admin/<name> handlers: async (app, ctx, rest_of_path, body) -> (status, payload);
        # admin_auth(headers) raises unless the master key is presented.
        self.admin_routes: dict[str, Any] = {}
        self.admin_auth: Any = None
        # async authorize(headers): raises unless a valid key is presented (set by auth).
        self.authorize: Any = None
        self._closers: list[Any] = []
        self.started = False
        self.auth_enabled = False
        self.stages = build_stages(self)
        self.handler = pipeline.build(self.stages, self.dispatch)

    def _ledger_counts(self) -> dict[str, float]:
        c = self.ledger.counters
        return {"written": c.written, "spooled": c.spooled, "replayed": c.replayed,
                "queued": self.ledger.pending, "db_up": 1.0 if self.ledger.db_healthy else 0.0}

    def on_close(self, closer: Any) -> None:
        """Register an async callable to run at shutdown (stages with background tasks)."""
        self._closers.append(closer)

    async def start(self) -> None:
        t0 = time.perf_counter()
        await asyncio.to_thread(self.ledger.start)
        await asyncio.gather(*(u.start() for u in self.upstreams.values()))
        for stage in self.stages:
            start = getattr(stage, "start", None)
            if start is not None:
                await start()
        self.started = True
        log.info("gateway ready in %.1f s: models %s", time.perf_counter() - t0,
                 ", ".join(self.models))

    async def stop(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("error while stopping a stage")
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()),
                             return_exceptions=True)
        await asyncio.to_thread(self.ledger.close)

    def resolve(self, ctx: RequestContext) -> None:
        """Set ``ctx.model`` from the name the client asked for (routes resolve later)."""
        name = ctx.requested_model or ""
        model = self.models.get(name)
        if model is not None:
            wanted = "embeddings" if ctx.endpoint == "embeddings" else "chat"
            if model.kind is not None and model.kind != wanted:
                raise BadRequest(f"model '{name}' serves {model.kind}, not {ctx.endpoint}",
                                 code="model_not_supported")
            ctx.model = model
            ctx.served_model = model.name
            ctx.provider = model.provider
            return
        if name in self.aliases:
            ctx.route = name
            return
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       code="model_not_found")

    async def dispatch(self, ctx: RequestContext) -> Response:
        """The pipeline's last step: call the upstream of ``ctx.model``."""
        if ctx.model is None:
            raise NotFound(f"no model resolved for '{ctx.requested_model}'",
                           code="model_not_found")
        ctx.served_model = ctx.model.name
        ctx.provider = ctx.model.provider
        upstream = self.upstreams[ctx.model.name]
        if ctx.endpoint == "embeddings":
            return await self.embed_via(upstream.embed, ctx)
        return await upstream.complete(ctx)

    async def embed_via(self, embed: Any, ctx: RequestContext) -> Response:
        """Answer an embeddings request through ``embed`` (the upstream, or its batcher)."""
        assert ctx.model is not None
        inputs = ctx.notes.pop("_inputs", None) or ctx.body["input"]
        if not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        t0 = time.perf_counter()
        result: EmbedResult = await embed(inputs, ctx)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        ctx.upstream_ms += elapsed_ms
        ctx.usage.prompt_tokens = result.prompt_tokens
        if result.compute_s is not None:
            ctx.compute_s = (ctx.compute_s or 0.0) + result.compute_s
        ctx.attempts.append(Attempt(ctx.model.name, ctx.model.provider, 200, elapsed_ms,
                                    prompt_tokens=result.prompt_tokens))
        return Response(200, payload=embeddings_payload(ctx.model.name, result,
                                                         ctx.body.get("encoding_format")))
