"""The ASGI application: which path goes where, and the lifespan.

A bare ASGI callable rather than a framework: the request path is parse → pipeline →
send, and every microsecond here is paid on every request (see DESIGN.md §1). The proxied
endpoints' flow is in ``proxy.py``, the admin endpoints' in ``admin.py``, the browser
console's in ``console_ui.py``, the plumbing in ``http.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson

from margin.auth.admin import token_guard
from margin.auth.session_stores import RedisSessions
from margin.errors import MarginError, NotFound, UpstreamError, error_body
from margin.gateway import health, openapi, rejections, validate
from margin.gateway.admin import Admin
from margin.gateway.connections import PARSER_REJECTION_HOOK
from margin.gateway.console_session import ConsoleAuth
from margin.gateway.console_ui import ConsoleUI
from margin.gateway.dialects.edge import DialectRoutes
from margin.gateway.http import (MethodNotAllowed, Receive, Scope, Send, client_address,
                                 request_headers, send_json)
from margin.gateway.proxy import Proxy, new_request_id
from margin.gateway.service import Gateway
from margin.gateway.stages.auth import authorize

log = logging.getLogger("margin.gateway")

_ENDPOINTS = {
    "/v1/chat/completions": ("chat", validate.validate_chat),
    "/chat/completions": ("chat", validate.validate_chat),
    "/v1/completions": ("completions", validate.validate_completions),
    "/completions": ("completions", validate.validate_completions),
    "/v1/embeddings": ("embeddings", validate.validate_embeddings),
    "/embeddings": ("embeddings", validate.validate_embeddings),
}


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.proxy = Proxy(gateway)
        s = gateway.settings
        sessions = console_auth(gateway)
        self.admin = Admin(gateway, sessions)
        self.ui = ConsoleUI(s.console, sessions, keys=gateway.keys is not None,
                            log_content=s.ledger.log_content,
                            max_body=s.server.max_body_bytes,
                            body_timeout_s=s.server.body_timeout_s)
        self.metrics_guard = _metrics_guard(gateway)
        self._metrics_lock = asyncio.Lock()
        self._openapi_raw: bytes | None = None
        self.dialects = DialectRoutes(gateway)

    # -- ASGI entry ------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            endpoint = _ENDPOINTS.get(path) or self.dialects.endpoints.get(path)
            if endpoint is not None and scope["method"] == "POST":
                await self.proxy.handle(scope, receive, send, *endpoint)
            else:
                await self._other(scope, receive, send, path)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "state" in scope:  # the connection protocol finds it there (connections.py)
            scope["state"][PARSER_REJECTION_HOOK] = rejections.recorder(self.gw)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- everything else -------------------------------------------------------------
    async def _other(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        try:
            if self.dialects.serves(method, path):
                await self.dialects.serve(scope, receive, send, path)
                return
            if path.startswith("/admin/"):
                await self.admin.handle(scope, receive, send, path[len("/admin/"):])
                return
            if path == "/ui" or path.startswith("/ui/"):
                await self.ui.handle(scope, receive, send, path)
                return
            route = self._route(path)
            if route is None:
                if path in _ENDPOINTS or path in self.dialects.endpoints:
                    raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST",
                                           allow="POST")
                raise NotFound(f"no such endpoint: {method[:20]} {path[:200]}",
                               code="unknown_url")
            if method == "HEAD":
                # What GET would answer, without the body (RFC 9110 §9.3.2).
                send = _headers_only(send)
            elif method != "GET":
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET",
                                       allow="GET, HEAD")
            await route(scope, send, path)
        except (NotFound, MethodNotAllowed) as exc:
            # A request refused before any endpoint took it still leaves its row.
            ctx = rejections.context(scope["headers"], method, path, client_address(scope))
            await rejections.attribute_key(self.gw, ctx)
            rejections.record(self.gw, ctx, exc.status_code, exc.error_type, exc.message)
            await send_json(send, exc.status_code, error_body(exc),
                            [(k.encode(), v.encode()) for k, v in exc.headers().items()])
        except MarginError as exc:
            await send_json(send, exc.status_code, error_body(exc),
                            [(k.encode(), v.encode()) for k, v in exc.headers().items()])

    def _route(self, path: str) -> Any:
        if path in ("/v1/models", "/models") or path.startswith(("/v1/models/", "/models/")):
            return self._get_models
        if path == "/healthz":
            return self._healthz
        if path in ("/healthz/live", "/healthz/ready"):
            return self._probe
        if path == "/metrics":
            return self._metrics
        if path == "/openapi.json":
            return self._openapi
        return None

    async def _get_models(self, scope: Scope, send: Send, path: str) -> None:
        if self.gw.keys is not None and self.gw.master_key:
            await authorize(request_headers(scope), self.gw.master_key, self.gw.keys,
                            client_address(scope))
        if path in ("/v1/models", "/models"):
            await send_json(send, 200, self._models())
            return
        name = path.split("/models/", 1)[1]
        for m in self._models()["data"]:
            if m["id"] == name:
                await send_json(send, 200, m)
                return
        raise NotFound(f"The model '{name[:200]}' does not exist", code="model_not_found")

    async def _healthz(self, scope: Scope, send: Send, path: str) -> None:
        ok = self.gw.started
        await send_json(send, 200 if ok else 503, {
            "status": "ok" if ok else "starting",
            "ledger_db_up": self.gw.ledger.db_healthy,
            "ledger": "degraded" if self.gw.ledger.degraded else "ok",
            "ledger_queue_rows": self.gw.ledger.pending,
            "ledger_spool_bytes": self.gw.ledger.spool_bytes,
            "models": list(self.gw.models)})

    async def _probe(self, scope: Scope, send: Send, path: str) -> None:
        status, body = (health.live(self.gw) if path == "/healthz/live"
                        else await health.ready(self.gw))
        await send_json(send, status, body)

    async def _openapi(self, scope: Scope, send: Send, path: str) -> None:
        if self._openapi_raw is None:
            kinds = {name: m.kind for name, m in self.gw.models.items()}
            chat = [n for n in self._models_names() if kinds.get(n) != "embeddings"]
            embed = [n for n, k in kinds.items() if k in (None, "embeddings")]
            doc = openapi.document(chat, embed, with_admin=bool(self.admin.master_key),
                                   with_auth=self.gw.auth_enabled)
            self._openapi_raw = orjson.dumps(doc)
        await send_json(send, 200, None, raw=self._openapi_raw)

    async def _metrics(self, scope: Scope, send: Send, path: str) -> None:
        self.metrics_guard(request_headers(scope))
        # Rendering takes time in proportion to the series; never on the event loop, and
        # one scrape at a time so a scrape storm queues instead of piling up threads.
        async with self._metrics_lock:
            body = await asyncio.to_thread(self.gw.metrics.render)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _models_names(self) -> list[str]:
        return list(self.gw.models) + [a for a in self.gw.routes if a not in self.gw.models]

    def _models(self) -> dict[str, Any]:
        names = self._models_names()
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "margin"} for n in names]}


def console_auth(gateway: Gateway) -> ConsoleAuth | None:
    """The console's logins, when there is a master key to log in with; sessions in Redis
    when one is configured, so every worker and replica knows them."""
    cfg = gateway.settings.console
    if not gateway.master_key or not cfg.enabled:
        return None
    url = cfg.redis_url or gateway.settings.redis_url
    store = (RedisSessions(gateway.redis.client(url, cfg.redis_timeout_s), cfg.redis_prefix,
                           cfg.session_ttl_s) if url else None)
    return ConsoleAuth(gateway.master_key, cfg, store=store, keys=gateway.keys)


def _metrics_guard(gateway: Gateway) -> Any:
    cfg = gateway.settings.metrics
    if not cfg.require_auth:
        return lambda headers: None
    tokens = [t for t in (os.environ.get(cfg.token_env), gateway.master_key) if t]
    if not tokens:
        log.warning("metrics.require_auth is on but neither %s nor a master key is set: "
                    "/metrics refuses every scrape", cfg.token_env)
    return token_guard(tokens, "/metrics needs a token (Authorization: Bearer <token>).")


def _headers_only(send: Send) -> Send:
    async def send_head(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return send_head


def create_app(gateway: Gateway) -> GatewayApp:
    return GatewayApp(gateway)


__all__ = ["GatewayApp", "create_app", "new_request_id", "UpstreamError"]
