"""Ledger rows for requests refused before any endpoint took them: unknown paths (404),
wrong methods (405), and what the HTTP parser refuses (a bad Content-Length, two of them,
broken chunking: 400 from ``connections.py``).

Such a request is attributed as far as it can be: its path (the endpoint it aimed at, or
``unknown``), the client's ``x-margin-user``/``x-margin-feature`` headers when they pass
the same checks as on the proxied endpoints, and its API key when it presents a valid one
(verified like any other; a parser-level rejection is answered before any key check, so
its row carries none). The path itself is kept, cut to 200 characters, in ``notes``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from margin.auth.admin import presented_key
from margin.errors import MarginError
from margin.gateway import validate
from margin.gateway.record import ledger_row
from margin.gateway.service import Gateway
from margin.types import RequestContext

log = logging.getLogger("margin.gateway")

# Path -> the endpoint name rows use for it; anything else is recorded as "unknown".
_ENDPOINTS = {"/v1/chat/completions": "chat", "/chat/completions": "chat",
              "/v1/completions": "completions", "/completions": "completions",
              "/v1/embeddings": "embeddings", "/embeddings": "embeddings"}

MAX_PATH_CHARS = 200


def context(raw_headers: Iterable[tuple[bytes, bytes]], method: str, path: str,
            client: str | None) -> RequestContext:
    from margin.gateway.proxy import new_request_id

    raw = list(raw_headers)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
    ctx = RequestContext(request_id=new_request_id(), endpoint=_ENDPOINTS.get(path, "unknown"),
                         body={}, headers=headers, client=client)
    try:
        ctx.user, ctx.feature = validate.attribution_headers(raw)
    except MarginError:
        pass  # a refused value is never kept; the row stays unattributed
    ctx.notes["path"] = path[:MAX_PATH_CHARS]
    ctx.notes["method"] = method[:20]
    return ctx


async def attribute_key(gw: Gateway, ctx: RequestContext) -> None:
    """The key's id and team when the request presents a valid key (else none)."""
    if gw.keys is None or not gw.master_key:
        return
    token = presented_key(ctx.headers)
    if token is None:
        return
    try:
        record = await gw.keys.verify(token, ctx.client)
    except MarginError:
        return  # a wrong key on a wrong path: a 404 row with no key (the failure counts)
    ctx.key_id, ctx.team = record.id, record.team
    if record.user:
        ctx.user = record.user


def record(gw: Gateway, ctx: RequestContext, status: int, error_type: str,
           message: str) -> None:
    ctx.fail(status, error_type, message)
    ctx.latency_ms = ctx.elapsed_ms()
    ctx.overhead_ms = ctx.latency_ms
    try:
        gw.metrics.observe(ctx)
        gw.ledger.submit(ledger_row(ctx, log_content=False))
    except Exception:  # accounting must never take the gateway down; it is logged
        log.exception("could not record refused request %s", ctx.request_id)


def recorder(gw: Gateway) -> Any:
    """What the connection protocol calls for a request its parser refused."""
    def on_parser_rejection(raw_headers: list[tuple[bytes, bytes]], method: str, path: str,
                            client: str | None, message: str) -> None:
        record(gw, context(raw_headers, method, path, client), 400, "invalid_request_error",
               message)
    return on_parser_rejection
