"""What a request may consume, bounded before it runs: its prompt tokens (a bound over
everything a provider bills, computed once per request and kept on the context) and the most
completion tokens it may produce."""

from __future__ import annotations

from typing import Any

from margin.metering.tokens import prompt_token_bound, text_token_bound
from margin.types import RequestContext

# What a request may name its completion cap by: chat, legacy chat, /v1/responses.
CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def prompt_tokens(ctx: RequestContext) -> int:
    """An upper bound on the request's prompt tokens (before the learned correction),
    computed once per request."""
    if ctx.prompt_tokens_est is not None:
        return ctx.prompt_tokens_est
    body = ctx.body
    if ctx.endpoint == "embeddings":
        items = body.get("input")
        if isinstance(items, str):
            n = text_token_bound(items)
        elif isinstance(items, list) and items and isinstance(items[0], int):
            n = len(items)
        elif isinstance(items, list):
            n = sum(text_token_bound(i) if isinstance(i, str) else len(i) for i in items
                    if isinstance(i, (str, list)))
        else:
            n = 0
    else:
        n = prompt_token_bound(body)
    ctx.prompt_tokens_est = n
    return n


def requested_cap(body: dict[str, Any]) -> int | None:
    for name in CAP_FIELDS:
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    per_prompt = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    prompt = body.get("prompt")
    prompts = (len(prompt) if isinstance(prompt, list) and prompt
               and not all(isinstance(p, int) for p in prompt) else 1)
    return per_prompt * prompts


def max_completion_tokens(ctx: RequestContext, default: int) -> int:
    """The most completion tokens the request may produce (reasoning included): its
    ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens``, else ``default``,
    times its choices (``n``, and each prompt of a list)."""
    if ctx.endpoint == "embeddings":
        return 0
    return (requested_cap(ctx.body) or default) * choices(ctx.body)
