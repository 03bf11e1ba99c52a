"""What a request may consume, estimated before it runs: its prompt tokens (computed once
per request and kept on the context) and the most completion tokens it may produce."""

from __future__ import annotations

from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import RequestContext


def prompt_tokens(ctx: RequestContext) -> int:
    """Estimated prompt tokens of the request, computed once per request."""
    if ctx.prompt_tokens_est is not None:
        return ctx.prompt_tokens_est
    body = ctx.body
    if ctx.endpoint == "embeddings":
        items = body.get("input")
        if isinstance(items, str):
            n = estimate_tokens(items)
        elif isinstance(items, list) and items and isinstance(items[0], int):
            n = len(items)
        elif isinstance(items, list):
            n = sum(estimate_tokens(i) if isinstance(i, str) else len(i) for i in items
                    if isinstance(i, (str, list)))
        else:
            n = 0
    else:
        n = estimate_prompt_tokens(body)
    ctx.prompt_tokens_est = n
    return n


def max_completion_tokens(ctx: RequestContext, default: int) -> int:
    """The most completion tokens the request may produce: ``max_completion_tokens`` or
    ``max_tokens`` (else ``default``), times ``n`` choices."""
    if ctx.endpoint == "embeddings":
        return 0
    body = ctx.body
    cap = default
    for name in ("max_completion_tokens", "max_tokens"):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            cap = v
            break
    n = body.get("n")
    return cap * (n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)
