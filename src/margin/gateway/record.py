"""Turning a finished request into its ledger row (its cost: ``margin.metering.charge``)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from margin.types import RequestContext


def prompt_hash(ctx: RequestContext) -> str:
    """A stable hash of what was asked (for duplicate analysis), never the text itself."""
    body = ctx.body
    if ctx.endpoint == "chat":
        subject: Any = body.get("messages")
    elif ctx.endpoint == "completions":
        subject = body.get("prompt")
    else:
        subject = body.get("input")
    data = orjson.dumps([ctx.endpoint, body.get("model"), subject], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def ledger_row(ctx: RequestContext, *, log_content: bool) -> dict[str, Any]:
    u = ctx.usage
    row: dict[str, Any] = {
        "id": ctx.request_id,
        "ts": ctx.ts,
        "endpoint": ctx.endpoint,
        "user_id": ctx.user,
        "team": ctx.team,
        "feature": ctx.feature,
        "key_id": ctx.key_id,
        "requested_model": ctx.requested_model,
        "model": ctx.served_model,
        "provider": ctx.provider,
        "route": ctx.route,
        "status": ctx.status,
        "error_type": ctx.error_type,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
        "cost_usd": round(ctx.cost_usd, 12),
        "saved_usd": round(ctx.saved_usd, 12),
        "estimated": int(u.estimated),
        "streamed": int(ctx.stream),
        "cache": ctx.cache,
        "cache_similarity": ctx.cache_similarity,
        "latency_ms": round(ctx.latency_ms, 3),
        "upstream_ms": round(ctx.upstream_ms, 3),
        "ttft_ms": round(ctx.ttft_ms, 3) if ctx.ttft_ms is not None else None,
        "overhead_ms": round(ctx.overhead_ms, 3),
        "stage_ms": orjson.dumps({k: round(v, 4) for k, v in ctx.stage_ms.items()}).decode(),
        "attempts": orjson.dumps([
            {"model": a.model, "deployment": a.deployment, "status": a.status,
             "latency_ms": round(a.latency_ms, 2), "error": a.error,
             "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens}
            for a in ctx.attempts]).decode() if ctx.attempts else None,
        "prompt_hash": ctx.prompt_hash,
        "tokens_before_compression": ctx.tokens_before_compression,
        "tokens_after_compression": ctx.tokens_after_compression,
        "notes": orjson.dumps(ctx.notes).decode() if ctx.notes else None,
        "prompt": None,
        "response": None,
        "reserved_usd": (round(ctx.reserved_usd, 12) if ctx.reserved_usd is not None
                         else None),
        "cache_write_tokens": u.cache_write_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "dialect": ctx.dialect,
        "optimization": ctx.optimization,
        "optimization_saved_usd": (round(ctx.optimization_saved_usd, 12)
                                   if ctx.optimization_saved_usd is not None else None),
        "shadow_of": None,
        "judge": None,
        "agreement": None,
        "judge_score": None,
        "experiment": ctx.experiment,
        "arm": ctx.arm,
    }
    if ctx.shadow is not None:
        sh = ctx.shadow
        row["shadow_of"], row["judge"] = sh.request_id, sh.judge
        row["agreement"] = None if sh.agreement is None else int(sh.agreement)
        row["judge_score"] = None if sh.score is None else round(float(sh.score), 6)
    if log_content:
        subject = (ctx.body.get("messages") if ctx.endpoint == "chat"
                   else ctx.body.get("prompt") if ctx.endpoint == "completions"
                   else ctx.body.get("input"))
        row["prompt"] = orjson.dumps(subject).decode()
        row["response"] = ctx.response_text
    return row
