"""What the limit and budget stages share at run time: one Redis client per gateway,
background tasks that are awaited at shutdown, and the prompt-token estimate."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

from margin.limits.redis_common import make_client
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens

log = logging.getLogger("margin.limits")


def shared_redis(gateway: Any, url: str, timeout_s: float) -> Any:
    """One client (connection pool) per gateway and URL, closed with the gateway."""
    clients: dict[tuple[str, float], Any] | None = getattr(gateway, "limits_redis_clients", None)
    if clients is None:
        clients = {}
        gateway.limits_redis_clients = clients
    key = (url, timeout_s)
    if key not in clients:
        client = clients[key] = make_client(url, timeout_s)
        gateway.on_close(client.aclose)
    return clients[key]


PROMPT_NOTE = "_prompt_tokens_est"


def prompt_tokens(ctx: Any) -> int:
    """Estimated prompt tokens of the request, computed once per request."""
    cached = ctx.notes.get(PROMPT_NOTE)
    if cached is not None:
        return cached
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
    ctx.notes[PROMPT_NOTE] = n
    return n


def max_completion_tokens(ctx: Any, default: int) -> int:
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
