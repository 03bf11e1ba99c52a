"""The ASGI application: which path goes where, and the lifespan.

A bare ASGI callable rather than a framework: the request path is parse → pipeline →
send, and every microsecond here is paid on every request (see DESIGN.md §1). The proxied
endpoints' flow is in ``proxy.py``, the admin endpoints' in ``admin.py``, the plumbing in
``http.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from margin.errors import MarginError, NotFound, UpstreamError, error_body
from margin.gateway import health, validate
from margin.gateway.admin import Admin
from margin.gateway.http import (MethodNotAllowed, Receive, Scope, Send, request_headers,
                                 send_json)
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
        self.admin = Admin(gateway)

    # -- ASGI entry ------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            endpoint = _ENDPOINTS.get(path)
            if endpoint is not None and scope["method"] == "POST":
                await self.proxy.handle(scope, receive, send, *endpoint)
            else:
                await self._other(scope, receive, send, path)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
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
            if method == "GET" and path.startswith(("/v1/models", "/models")) \
                    and self.gw.keys is not None and self.gw.master_key:
                await authorize(request_headers(scope), self.gw.master_key, self.gw.keys)
            if method == "GET" and path in ("/v1/models", "/models"):
                await send_json(send, 200, self._models())
            elif method == "GET" and path.startswith(("/v1/models/", "/models/")):
                name = path.split("/models/", 1)[1]
                for m in self._models()["data"]:
                    if m["id"] == name:
                        await send_json(send, 200, m)
                        return
                raise NotFound(f"The model '{name}' does not exist", code="model_not_found")
            elif method == "GET" and path == "/healthz":
                ok = self.gw.started
                await send_json(send, 200 if ok else 503, {
                    "status": "ok" if ok else "starting",
                    "ledger_db_up": self.gw.ledger.db_healthy,
                    "ledger_queue_rows": self.gw.ledger.pending,
                    "models": list(self.gw.models)})
            elif method == "GET" and path in ("/healthz/live", "/healthz/ready"):
                status, body = (health.live(self.gw) if path == "/healthz/live"
                                else await health.ready(self.gw))
                await send_json(send, status, body)
            elif method == "GET" and path == "/metrics":
                body = self.gw.metrics.render()
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif path.startswith("/admin/"):
                await self.admin.handle(scope, receive, send, path[len("/admin/"):])
            elif path in _ENDPOINTS:
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
            else:
                raise NotFound(f"no such endpoint: {method} {path}", code="unknown_url")
        except MarginError as exc:
            await send_json(send, exc.status_code, error_body(exc),
                            [(k.encode(), v.encode()) for k, v in exc.headers().items()])

    def _models(self) -> dict[str, Any]:
        names = list(self.gw.models) + [a for a in self.gw.routes if a not in self.gw.models]
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "margin"} for n in names]}


def create_app(gateway: Gateway) -> GatewayApp:
    return GatewayApp(gateway)


__all__ = ["GatewayApp", "create_app", "new_request_id", "UpstreamError"]
