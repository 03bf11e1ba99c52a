"""The ASGI application: routes, body parsing, errors, headers, and the ledger hand-off.

A bare ASGI callable rather than a framework: the request path is parse → pipeline →
send, and every microsecond here is paid on every request (see DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from margin.errors import (MarginError, NotFound, PayloadTooLarge, BadRequest, UpstreamError,
                           error_body)
from margin.auth.admin import KeysAdmin, SpendAdmin, master_guard
from margin.gateway import validate
from margin.gateway.record import ledger_row, prompt_hash
from margin.gateway.service import Gateway
from margin.gateway.stages.auth import authorize
from margin.gateway.streaming import DONE, sse, sse_error, text_of
from margin.metering.charge import finalize_cost
from margin.types import AdminRequest, RequestContext, Response

log = logging.getLogger("margin.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_ENDPOINTS = {
    "/v1/chat/completions": ("chat", validate.validate_chat),
    "/chat/completions": ("chat", validate.validate_chat),
    "/v1/completions": ("completions", validate.validate_completions),
    "/completions": ("completions", validate.validate_completions),
    "/v1/embeddings": ("embeddings", validate.validate_embeddings),
    "/embeddings": ("embeddings", validate.validate_embeddings),
}

# Request ids: a random per-process prefix and a counter. As unique as uuid4 across
# replicas, without a getrandom() system call on every request.
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


AdminHandler = Callable[[AdminRequest], Awaitable[tuple[int, Any]]]


def admin_handlers(gateway: Gateway) -> dict[str, AdminHandler]:
    """``/admin/<name>`` handlers; they exist whenever a master key does."""
    if gateway.keys is None:
        return {}
    s = gateway.settings
    return {"keys": KeysAdmin(gateway.keys),
            "spend": SpendAdmin(s.ledger.url, s.limits.timezone)}


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.max_body = gateway.settings.server.max_body_bytes
        self.log_content = gateway.settings.ledger.log_content
        self.admin = admin_handlers(gateway)
        self.admin_guard = master_guard(gateway.master_key) if gateway.master_key else None

    # -- ASGI entry ------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            endpoint = _ENDPOINTS.get(path)
            if endpoint is not None and scope["method"] == "POST":
                await self._proxy(scope, receive, send, *endpoint)
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

    # -- helpers -----------------------------------------------------------------------
    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and int(value or 0) > self.max_body:
                raise PayloadTooLarge(f"request body over the limit of {self.max_body} bytes")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body over the limit of {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send_json(send: Send, status: int, payload: Any,
                         headers: list[tuple[bytes, bytes]] | None = None,
                         raw: bytes | None = None) -> None:
        body = raw if raw is not None else orjson.dumps(payload,
                                                        option=orjson.OPT_SERIALIZE_NUMPY)
        h = [_JSON, (b"content-length", str(len(body)).encode())]
        if headers:
            h.extend(headers)
        await send({"type": "http.response.start", "status": status, "headers": h})
        await send({"type": "http.response.body", "body": body})

    def _margin_headers(self, ctx: RequestContext, with_cost: bool) -> list[tuple[bytes, bytes]]:
        h = [(b"x-margin-request-id", ctx.request_id.encode()),
             (b"x-margin-cache", ctx.cache.encode()),
             (b"x-margin-model", (ctx.served_model or "").encode()),
             (b"x-margin-overhead-ms", f"{max(ctx.elapsed_ms() - ctx.upstream_ms, 0):.3f}".encode())]
        if with_cost:
            h.append((b"x-margin-cost-usd", f"{ctx.cost_usd:.8f}".encode()))
        for k, v in ctx.response_headers.items():
            h.append((k.encode(), str(v).encode()))
        return h

    # -- the proxied endpoints -----------------------------------------------------------
    async def _proxy(self, scope: Scope, receive: Receive, send: Send, endpoint: str,
                     check: Callable[[dict[str, Any]], Any]) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctx = RequestContext(request_id=new_request_id(), endpoint=endpoint, body={},
                             headers=headers)
        ctx.user = headers.get("x-margin-user")
        ctx.feature = headers.get("x-margin-feature")
        self.gw.metrics.in_flight.inc()
        sent = False
        try:
            t0 = time.perf_counter_ns()
            raw = await self._read_body(scope, receive)
            body = validate.parse_json_object(raw)
            ctx.body = body
            ctx.requested_model = body.get("model") if isinstance(body.get("model"), str) else None
            ctx.stream = body.get("stream") is True
            inputs = check(body)
            if endpoint == "embeddings":
                ctx.inputs = inputs
            if ctx.user is None and isinstance(body.get("user"), str):
                ctx.user = body["user"]
            ctx.prompt_hash = prompt_hash(ctx)
            ctx.stage_ms["parse"] = (time.perf_counter_ns() - t0) / 1e6
            response = await self.gw.handler(ctx)
            if response.is_stream:
                sent = True
                await self._send_stream(ctx, response, send, receive)
            else:
                finalize_cost(ctx, self.gw.prices)
                ctx.status = response.status
                if self.log_content and response.payload is not None:
                    ctx.response_text = text_of(response.payload)
                h = self._margin_headers(ctx, with_cost=True)
                h.extend((k.encode(), v.encode()) for k, v in response.headers.items())
                sent = True
                await self._send_json(send, response.status, response.payload, h, response.raw)
        except MarginError as exc:
            ctx.fail(exc.status_code, exc.error_type, exc.message)
            if not sent:
                sent = True
                finalize_cost(ctx, self.gw.prices)
                h = self._margin_headers(ctx, with_cost=True)
                h.extend((k.encode(), v.encode()) for k, v in exc.headers().items())
                await self._send_json(send, exc.status_code, error_body(exc), h)
        except Exception as exc:  # never a stack trace to the client
            log.exception("unexpected error in request %s", ctx.request_id)
            ctx.fail(500, "server_error", f"{type(exc).__name__}: {exc}")
            if not sent:
                sent = True
                body_err = {"error": {"message": f"internal error (request {ctx.request_id})",
                                      "type": "server_error", "code": None, "param": None}}
                await self._send_json(send, 500, body_err,
                                      [(b"x-margin-request-id", ctx.request_id.encode())])
        finally:
            self.gw.metrics.in_flight.dec()
            self._finish(ctx)

    async def _send_stream(self, ctx: RequestContext, response: Response, send: Send,
                           receive: Receive) -> None:
        assert response.stream is not None
        stream = response.stream
        h = _SSE_HEADERS + self._margin_headers(ctx, with_cost=False)
        h.extend((k.encode(), v.encode()) for k, v in response.headers.items())
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch())
        texts: list[str] = []
        try:
            await send({"type": "http.response.start", "status": 200, "headers": h})
            try:
                async for chunk in stream:
                    if disconnected.is_set():
                        ctx.fail(499, "client_closed", "client closed the stream")
                        break
                    if self.log_content:
                        for ch in chunk.get("choices") or []:
                            piece = (ch.get("delta") or {}).get("content") or ch.get("text")
                            if piece:
                                texts.append(piece)
                    await send({"type": "http.response.body", "body": sse(chunk),
                                "more_body": True})
            except MarginError as exc:
                ctx.fail(exc.status_code, exc.error_type, exc.message)
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse_error(exc.message, exc.error_type, exc.code)})
            except Exception as exc:
                log.exception("stream failed in request %s", ctx.request_id)
                ctx.fail(502, "upstream_error", f"{type(exc).__name__}: {exc}")
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse_error("the stream failed", "server_error", None)})
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": DONE, "more_body": False})
        except OSError:
            ctx.fail(499, "client_closed", "client went away")
        finally:
            watcher.cancel()
            if texts:
                ctx.response_text = "".join(texts)
            finalize_cost(ctx, self.gw.prices)

    def _finish(self, ctx: RequestContext) -> None:
        ctx.latency_ms = ctx.elapsed_ms()
        ctx.overhead_ms = max(ctx.latency_ms - ctx.upstream_ms, 0.0)
        try:
            self.gw.metrics.observe(ctx)
            self.gw.ledger.submit(ledger_row(ctx, log_content=self.log_content))
        except Exception:  # accounting must never take the gateway down; it is logged
            log.exception("could not record request %s", ctx.request_id)

    # -- everything else -------------------------------------------------------------
    async def _other(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        try:
            if method == "GET" and path.startswith(("/v1/models", "/models")) \
                    and self.gw.keys is not None and self.gw.master_key:
                await authorize({k.decode("latin-1").lower(): v.decode("latin-1")
                                 for k, v in scope["headers"]}, self.gw.master_key, self.gw.keys)
            if method == "GET" and path in ("/v1/models", "/models"):
                await self._send_json(send, 200, self._models())
            elif method == "GET" and path.startswith(("/v1/models/", "/models/")):
                name = path.split("/models/", 1)[1]
                for m in self._models()["data"]:
                    if m["id"] == name:
                        await self._send_json(send, 200, m)
                        return
                raise NotFound(f"The model '{name}' does not exist", code="model_not_found")
            elif method == "GET" and path == "/healthz":
                ok = self.gw.started
                await self._send_json(send, 200 if ok else 503, {
                    "status": "ok" if ok else "starting",
                    "ledger_db_up": self.gw.ledger.db_healthy,
                    "ledger_queue_rows": self.gw.ledger.pending,
                    "models": list(self.gw.models)})
            elif method == "GET" and path == "/metrics":
                body = self.gw.metrics.render()
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif path.startswith("/admin/"):
                await self._admin(scope, receive, send, path[len("/admin/"):])
            elif path in _ENDPOINTS:
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
            else:
                raise NotFound(f"no such endpoint: {method} {path}", code="unknown_url")
        except MarginError as exc:
            await self._send_json(send, exc.status_code, error_body(exc),
                                  [(k.encode(), v.encode()) for k, v in exc.headers().items()])

    def _models(self) -> dict[str, Any]:
        names = list(self.gw.models) + [a for a in self.gw.routes if a not in self.gw.models]
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "margin"} for n in names]}

    async def _admin(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        head, _, rest = name.partition("/")
        handler = self.admin.get(head)
        if handler is None:
            raise NotFound(f"no such admin endpoint: /admin/{name}", code="unknown_url")
        if self.admin_guard is None:
            raise NotFound("admin endpoints need a master key: set MARGIN_MASTER_KEY",
                           code="admin_disabled")
        self.admin_guard(headers)
        body = await self._read_body(scope, receive)
        query = parse_qs(scope.get("query_string", b"").decode())
        status, payload = await handler(AdminRequest(scope["method"], rest, query, headers, body))
        await self._send_json(send, status, payload)


class MethodNotAllowed(MarginError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


def create_app(gateway: Gateway) -> GatewayApp:
    return GatewayApp(gateway)


__all__ = ["GatewayApp", "create_app", "UpstreamError"]
