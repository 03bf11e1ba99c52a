"""One proxied request, start to finish: parse and check the body, run the pipeline, send
the answer (JSON or SSE), price it, and hand its row to the ledger — whatever happens, every
request answered gets exactly one row."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

from margin.errors import MarginError, error_body
from margin.gateway import validate
from margin.gateway.dialects import Dialect
from margin.gateway.http import (Receive, Scope, Send, client_address, read_body,
                                 request_headers, send_json)
from margin.gateway.record import ledger_row, prompt_hash
from margin.gateway.request_ids import new_request_id
from margin.gateway.service import Gateway
from margin.gateway.streaming import DONE, sse, sse_error, text_of
from margin.metering.charge import finalize_cost
from margin.quality.optimizations import Saving
from margin.types import LastEvents, RequestContext, Response

log = logging.getLogger("margin.gateway")

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]

# How long an answer may take before the gateway starts watching for the client leaving.
_WATCH_AFTER_S = 0.05


class _LateWatch:
    """A task watching for the client leaving, started only once ``_WATCH_AFTER_S`` has
    passed: watching costs a task (~25 µs), so a fast answer (a cache hit, a short
    stream) pays for a timer alone."""

    __slots__ = ("task", "_timer")

    def __init__(self, watch: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        self.task: asyncio.Task[None] | None = None
        self._timer = loop.call_later(_WATCH_AFTER_S, self._start, loop, watch)

    def _start(self, loop: asyncio.AbstractEventLoop,
               watch: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.task = loop.create_task(watch())

    def cancel(self) -> None:
        self._timer.cancel()
        if self.task is not None:
            self.task.cancel()


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.max_body = gateway.settings.server.max_body_bytes
        self.body_timeout_s = gateway.settings.server.body_timeout_s
        self.log_content = gateway.settings.ledger.log_content

    async def handle(self, scope: Scope, receive: Receive, send: Send, endpoint: str,
                     check: Callable[[dict[str, Any]], Any],
                     dialect: Dialect | None = None) -> None:
        # ``dialect``: a client API translated onto chat at this edge (gateway/dialects)
        headers = request_headers(scope)
        ctx = RequestContext(request_id=new_request_id(), endpoint=endpoint, body={},
                             headers=headers, client=client_address(scope))
        self.gw.metrics.in_flight.inc()
        sent = False
        recorded = False
        sent_body: dict[str, Any] | None = None  # the body as it entered the pipeline
        saving: Saving | None = None

        def record() -> None:
            # The row is journaled before the answer's last bytes leave, so no client can
            # hold an answer whose row a kill -9 could still take away.
            nonlocal recorded, saving
            if not recorded:
                recorded = True
                saving = self._finish(ctx, sent_body)

        try:
            t0 = time.perf_counter_ns()
            # Checked before they are kept: a refused value never reaches the ledger.
            ctx.user, ctx.feature = validate.attribution_headers(scope["headers"])
            raw = await read_body(scope, receive, self.max_body, self.body_timeout_s)
            body = validate.parse_json_object(raw)
            ctx.body = body
            model = body.get("model")
            ctx.requested_model = (model if isinstance(model, str)
                                   and len(model) <= validate.MAX_ATTRIBUTION_CHARS else None)
            ctx.stream = body.get("stream") is True
            inputs = check(body)
            if dialect is not None:
                ctx.body = dialect.to_chat(body, ctx)
            # The upstream's bytes can go straight out unless something reads the chunks
            ctx.relay = ctx.stream and dialect is None and not self.log_content
            if endpoint == "embeddings":
                ctx.inputs = inputs
            if ctx.user is None and isinstance(body.get("user"), str):
                ctx.user = body["user"]
            ctx.prompt_hash = prompt_hash(ctx)
            ctx.stage_ms["parse"] = (time.perf_counter_ns() - t0) / 1e6
            sent_body = ctx.body
            response = await self._answer_unless_abandoned(ctx, receive)
            if response is None:
                return  # the client left; nothing to send, the row says 499
            if response.is_stream:
                sent = True
                # a stream drawn for a shadow keeps its chunks; the others relay as before
                kept: list[Any] | None = [] if self.gw.shadows.sample_stream(ctx) else None
                await self._send_stream(ctx, response, send, receive, record, dialect, kept)
                if kept is not None:
                    try:
                        self.gw.shadows.offer_stream(ctx, saving, kept)
                    except Exception:  # evaluation must never fail an answered request
                        log.exception("could not start the shadow of %s", ctx.request_id)
            else:
                finalize_cost(ctx, self.gw.prices)
                ctx.status = response.status
                if self.log_content and response.payload is not None:
                    ctx.response_text = text_of(response.payload)
                h = self._margin_headers(ctx, with_cost=True)
                h.extend((k.encode(), v.encode()) for k, v in response.headers.items())
                payload, raw = response.payload, response.raw
                if dialect is not None:
                    payload, raw = dialect.answer(response, ctx), None
                sent = True
                record()
                await send_json(send, response.status, payload, h, raw)
                # Only now, with the answer out: its reference path, maybe, in the background
                try:
                    self.gw.shadows.offer(ctx, saving, response)
                except Exception:  # evaluation must never fail an answered request
                    log.exception("could not start the shadow of %s", ctx.request_id)
        except MarginError as exc:
            ctx.fail(exc.status_code, exc.error_type, exc.message)
            if not sent:
                sent = True
                finalize_cost(ctx, self.gw.prices)
                h = self._margin_headers(ctx, with_cost=True)
                h.extend((k.encode(), v.encode()) for k, v in exc.headers().items())
                record()
                await send_json(send, exc.status_code,
                                error_body(exc) if dialect is None else dialect.error_body(exc), h)
        except Exception as exc:  # never a stack trace to the client
            log.exception("unexpected error in request %s", ctx.request_id)
            ctx.fail(500, "server_error", f"{type(exc).__name__}: {exc}")
            if not sent:
                sent = True
                body_err = {"error": {"message": f"internal error (request {ctx.request_id})",
                                      "type": "server_error", "code": None, "param": None}}
                if dialect is not None:
                    body_err = dialect.error_body(MarginError(body_err["error"]["message"]))
                record()
                await send_json(send, 500, body_err,
                                      [(b"x-margin-request-id", ctx.request_id.encode())])
        finally:
            self.gw.metrics.in_flight.dec()
            record()

    async def _answer_unless_abandoned(self, ctx: RequestContext,
                                       receive: Receive) -> Response | None:
        """The pipeline's answer; None when the client disconnected first, in which case
        the pipeline (and the upstream call in it) is cancelled rather than left running
        for nobody (watched from ``_WATCH_AFTER_S`` on: ``_LateWatch``)."""
        me = asyncio.current_task()
        assert me is not None
        abandoned = False

        async def watch() -> None:
            nonlocal abandoned
            message = await receive()  # the body is read: the next message is a disconnect
            if message["type"] == "http.disconnect":
                abandoned = True
                me.cancel()

        watcher = _LateWatch(watch)
        try:
            response = await self.gw.handler(ctx)
        except asyncio.CancelledError:
            if not abandoned:
                raise
            response = None
        finally:
            watcher.cancel()
        if abandoned:
            me.uncancel()
            ctx.fail(499, "client_closed", "client closed the connection before the answer")
            finalize_cost(ctx, self.gw.prices)  # whatever the upstream reported by then
            return None
        return response

    async def _send_stream(self, ctx: RequestContext, response: Response, send: Send,
                           receive: Receive, record: Callable[[], None],
                           dialect: Dialect | None = None,
                           kept: list[Any] | None = None) -> None:
        # ``kept``: where a stream drawn for a shadow keeps its chunks (bytes or dicts)
        assert response.stream is not None
        stream = response.stream
        h = _SSE_HEADERS + self._margin_headers(ctx, with_cost=False)
        h.extend((k.encode(), v.encode()) for k, v in response.headers.items())
        disconnected = asyncio.Event()
        me = asyncio.current_task()
        assert me is not None
        relaying = False

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    if relaying:
                        # Waiting on a silent upstream would keep it generating for nobody
                        me.cancel()
                    return

        watcher = _LateWatch(watch)
        encode = dialect.encoder(ctx) if dialect is not None else None
        texts: list[str] = []
        # The upstream's last events wait for the stream's end (a few µs: the row's
        # accounting) and leave with it in one write.
        last = b""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": h})
            try:
                relaying = True
                async for chunk in stream:
                    if disconnected.is_set():
                        ctx.fail(499, "client_closed", "client closed the stream")
                        break
                    if kept is not None:
                        kept.append(chunk)  # parsed after the stream, only if shadowed
                    if last:  # more came after the "last" events after all
                        await send({"type": "http.response.body", "body": last,
                                    "more_body": True})
                        last = b""
                    if type(chunk) is bytes:  # whole events, relayed as the upstream sent them
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                        continue
                    if type(chunk) is LastEvents:
                        last = chunk
                        continue
                    if self.log_content:
                        for ch in chunk.get("choices") or []:
                            piece = (ch.get("delta") or {}).get("content") or ch.get("text")
                            if piece:
                                texts.append(piece)
                    data = sse(chunk) if encode is None else encode.chunk(chunk)
                    if data:
                        await send({"type": "http.response.body", "body": data,
                                    "more_body": True})
            except asyncio.CancelledError:
                if not disconnected.is_set():
                    raise
                me.uncancel()
                ctx.fail(499, "client_closed", "client closed the stream")
            except MarginError as exc:
                ctx.fail(exc.status_code, exc.error_type, exc.message)
                await send({"type": "http.response.body", "more_body": True,
                            "body": last + (sse_error if encode is None else encode.error)(
                                exc.message, exc.error_type, exc.code)})
                last = b""
            except Exception as exc:
                log.exception("stream failed in request %s", ctx.request_id)
                ctx.fail(502, "upstream_error", f"{type(exc).__name__}: {exc}")
                await send({"type": "http.response.body", "more_body": True,
                            "body": last + (sse_error if encode is None else encode.error)(
                                "the stream failed", "server_error", None)})
                last = b""
            finally:
                relaying = False
                await stream.aclose()  # type: ignore[attr-defined]
            if texts:
                ctx.response_text = "".join(texts)
            finalize_cost(ctx, self.gw.prices)
            record()
            if not disconnected.is_set():
                await send({"type": "http.response.body", "more_body": False,
                            "body": last + (DONE if encode is None
                                            else encode.end() if ctx.status == 200 else b"")})
        except OSError:
            ctx.fail(499, "client_closed", "client went away")
        finally:
            watcher.cancel()
            if texts:
                ctx.response_text = "".join(texts)
            finalize_cost(ctx, self.gw.prices)

    def _finish(self, ctx: RequestContext, sent_body: dict[str, Any] | None) -> Saving | None:
        ctx.latency_ms = ctx.elapsed_ms()
        ctx.overhead_ms = max(ctx.latency_ms - ctx.upstream_ms, 0.0)
        saving = None
        try:
            saving = self.gw.shadows.note(ctx, sent_body)
            self.gw.calibrations.stamp(ctx.notes)
            self.gw.ledger.submit(ledger_row(ctx, log_content=self.log_content))
            # The row is journaled before the answer's last bytes leave; the metrics can
            # wait until they have (a loop turn later), off the answer's own latency.
            asyncio.get_running_loop().call_soon(self._observe, ctx)
        except Exception:  # accounting must never take the gateway down; it is logged
            log.exception("could not record request %s", ctx.request_id)
        return saving

    def _observe(self, ctx: RequestContext) -> None:
        try:
            self.gw.metrics.observe(ctx)
        except Exception:
            log.exception("could not count request %s in the metrics", ctx.request_id)

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

