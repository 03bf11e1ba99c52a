"""A lean HTTP/1.1 client for the request path: keep-alive pools, httptools parsing.

Measured side by side (``margin bench gateway --stream``; docs/benchmarks.md): aiohttp's
client, on a streamed answer, spends ~80 µs of CPU and ~0.6 ms of time-to-first-byte per
request in its own machinery — a task hop per acquired connection, a parser callback,
flow-control call and timeout reschedule per HTTP chunk. This client does what a gateway
needs and no more: one ``transport.write`` per request, httptools (C) for the response,
every chunk that has arrived handed over in one ``readany``, one timer per wait.

What it does, since a gateway depends on it:

- **Pools** per origin (scheme, host, port): idle connections are reused newest first and
  dropped after ``keepalive_s``; at most ``max_connections`` open, later callers wait for
  one to come back. A connection is reused only once its response has ended. One given
  back before that (a stream read up to ``[DONE]``, its last chunk still on the way; a
  client that left) is read on, its bytes dropped, for up to ``_DRAIN_S`` and
  ``_DRAIN_BYTES``: reused if the response ends by then, closed if not.
- **A reused connection the server had already closed** (the race every keep-alive client
  has) is detected when nothing of the response arrived and the loss came within
  ``_RACE_S`` of sending, and the request is sent once more on a new connection; any other
  failure is the caller's to retry (a POST lost later may have been worked on).
- **Timeouts**: ``connect_timeout_s`` to open a connection (TLS included), ``read_timeout_s``
  between two arrivals of bytes (headers or body), like aiohttp's ``sock_read``.
- **Bodies** by Content-Length, chunked, or until the server closes; gzip and deflate
  decoded if a server sends them unasked (no ``Accept-Encoding`` is sent); reading is
  paused while more than ``http1_body.HIGH_WATER`` bytes wait for the reader.
- **TLS** for ``https`` with the system's trust store (``ssl.create_default_context``).

Errors are aiohttp's exception types (``ClientConnectorError``-like ``ClientConnectionError``,
``ServerDisconnectedError``, ``ClientPayloadError``) and ``asyncio.TimeoutError``, so the
upstreams that use it translate failures exactly as they did with aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from typing import Any
from urllib.parse import urlsplit

import httptools
from aiohttp import ClientConnectionError, ClientPayloadError, ServerDisconnectedError
from multidict import CIMultiDict, CIMultiDictProxy

from margin.upstreams.http1_body import Body, Response

_MAX_HEAD = 256 * 1024  # a response head past this is refused (aiohttp: 8 KiB a line)
_DRAIN_S = 0.25  # how long an answer given back unfinished may take to end, to be reused
_DRAIN_BYTES = 64 * 1024  # and how much more of it is read for that
_RACE_S = 1.0  # a reused connection lost sooner than this after sending: the keep-alive race


class _Origin:
    __slots__ = ("scheme", "host", "port", "host_header", "ssl")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default else f"{name}:{self.port}"
        self.ssl: ssl.SSLContext | None = (ssl.create_default_context()
                                           if parts.scheme == "https" else None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    def __init__(self, pool: HTTPPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.uses = 0
        self.got_bytes = False
        self.body = Body(self)
        self._header_list: list[tuple[str, str]] = []
        self._headers: asyncio.Future[tuple[int, CIMultiDictProxy[str]]] | None = None
        self._last_data = 0.0
        self._paused = False
        self._keep_alive = True
        self._complete = False
        self._until_close = False  # neither a length nor chunks: the body ends at EOF
        self._head_size = 0  # bytes of the response head (and 1xx answers) so far
        self._drain: asyncio.TimerHandle | None = None  # given back unfinished: read on
        self._drained = 0

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(ClientPayloadError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._broken(ClientPayloadError(f"malformed HTTP response: {exc}"))
            return
        # Still no headers after all of this: every byte of it was head. httptools keeps a
        # header it has not finished in memory, so an endless one is cut off here.
        if self._headers is not None and not self._headers.done():
            self._head_size += len(data)
            if self._head_size > _MAX_HEAD:
                self._broken(ClientPayloadError(
                    f"response headers over {_MAX_HEAD // 1024} KiB"))

    def eof_received(self) -> bool | None:
        self._end_at_close()
        return None  # and the transport closes

    def _end_at_close(self) -> None:
        # Only a close that ends a sound answer: one that follows a failure (ours, on a
        # timeout or bad bytes) must not make what arrived read as the whole body.
        if (self._until_close and not self._complete and self.body._exc is None
                and self._headers is not None and self._headers.done()
                and not self._headers.cancelled() and self._headers.exception() is None):
            self._complete = True
            self._keep_alive = False
            self.body._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_drain()
        # A reset (the server crashed, a proxy gave up) is a loss, not the end of a body
        # read until the close. TLS errors keep the benefit of the doubt: servers that
        # close without close_notify are common, and that is their orderly close.
        if not isinstance(exc, ConnectionError):
            self._end_at_close()
        self.pool._dropped(self)
        if self._headers is not None and not self._headers.done():
            self._headers.set_exception(ServerDisconnectedError())
        if not self._complete:
            self.body._fail(ClientPayloadError("the upstream closed the connection mid-answer")
                            if self._headers is not None and self._headers.done()
                            else ServerDisconnectedError())

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._header_list = []
            return
        headers = CIMultiDictProxy(CIMultiDict(self._header_list))
        self._keep_alive = self.parser.should_keep_alive()
        self._until_close = ("content-length" not in headers and "chunked" not in
                             headers.get("transfer-encoding", "").lower()
                             and status not in (204, 304))
        coding = headers.get("content-encoding", "").strip().lower()
        if coding in ("gzip", "x-gzip"):
            self.body._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self.body._decoder = zlib.decompressobj()
        elif coding not in ("", "identity"):
            self._broken(ClientPayloadError(f"unsupported content-encoding {coding!r}"))
            return
        if self._headers is not None and not self._headers.done():
            self._headers.set_result((status, headers))

    def on_body(self, body: bytes) -> None:
        if self._drain is not None:  # nobody reads it any more: dropped
            self._drained += len(body)
            if self._drained > _DRAIN_BYTES:
                self.close()
            return
        self.body._feed(bytes(body))

    def on_message_complete(self) -> None:
        if self._headers is None or not self._headers.done():
            return  # the end of an interim answer
        self._complete = True
        if self._drain is not None:  # the end of an answer given back early: reusable now
            self._stop_drain()
            if self._keep_alive and not self.closed:
                self.idle_since = self.loop.time()
                self.pool._give_back(self)
            else:
                self.close()
            return
        self.body._end()

    # -- the pool's side ----------------------------------------------------------------
    def _broken(self, exc: BaseException) -> None:
        self._keep_alive = False
        if self._headers is not None and not self._headers.done():
            self._headers.set_exception(exc)
        self.body._fail(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.uses += 1
        self.got_bytes = False
        self._complete = False
        self._header_list = []
        self._head_size = 0
        self.body = Body(self)
        self.parser = httptools.HttpResponseParser(self)
        self._headers = self.loop.create_future()
        self._last_data = self.loop.time()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    async def response(self, read_timeout_s: float) -> Response:
        fut = self._headers
        assert fut is not None
        if not fut.done():
            await self._until(fut, read_timeout_s)
        status, headers = fut.result()
        return Response(status, headers, self)

    async def _wait(self, body: Body) -> None:
        fut = self.loop.create_future()
        body._waiter = fut
        await self._until(fut, self.pool.read_timeout_s)

    async def _until(self, fut: asyncio.Future[Any], timeout_s: float) -> None:
        """Wait for ``fut``; a TimeoutError once ``timeout_s`` passed without a byte.
        One timer per wait, re-armed only when bytes did arrive meanwhile."""
        handle: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal handle
            idle_s = self.loop.time() - self._last_data
            if fut.done():
                return
            if idle_s >= timeout_s:
                fut.set_exception(asyncio.TimeoutError())
            else:
                handle = self.loop.call_later(timeout_s - idle_s, check)

        handle = self.loop.call_later(timeout_s, check)
        try:
            await fut
        except asyncio.TimeoutError:
            self._broken(ClientPayloadError("timed out"))
            raise
        finally:
            handle.cancel()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _finished(self) -> None:
        # The response has ended: the connection is clean whatever the reader left unread
        # (the next request gets a Body and parser of its own). Not ended but sound and
        # framed: read on, briefly, for its end. Anything else is closed.
        self._resume()
        if self.closed or not self._keep_alive:
            self.close()
        elif self._complete:
            self.idle_since = self.loop.time()
            self.pool._give_back(self)
        elif not self._until_close and self.body._exc is None and not self.pool._waiting:
            # (With requests waiting for a slot, it goes now: they need it more.)
            self.body._chunks.clear()  # not kept for a reader that has gone
            self.body._size = 0
            # One that reads on regardless hears so, rather than waiting on a connection
            # that may by then carry another request (whose timeout it would break).
            self.body._fail(ClientConnectionError("the answer was given back"))
            self._drained = 0
            self._drain = self.loop.call_later(_DRAIN_S, self.close)
        else:
            self.close()

    def _stop_drain(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    def close(self) -> None:
        self._stop_drain()
        if not self._complete and not self.closed:
            # Closed by us mid-answer (the pool closing, a reader that left): whoever
            # still waits hears so, instead of a clean end from the close that follows.
            self._keep_alive = False
            exc = ClientConnectionError("the connection was closed mid-answer")
            if self._headers is not None and not self._headers.done():
                self._headers.set_exception(exc)
            self.body._fail(exc)
        # By the transport, not self.closed: one closed while still opening has a
        # transport only later, and must not be left open then.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True
        self.pool._dropped(self)


class HTTPPool:
    """Connections to one origin, and requests on them (see the module doc)."""

    def __init__(self, base_url: str, *, max_connections: int = 256,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 120.0,
                 keepalive_s: float = 60.0, headers: dict[str, str] | None = None) -> None:
        self.origin = _Origin(base_url)
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._default_headers = dict(headers or {})
        self._default = "".join(f"{k}: {v}\r\n" for k, v in self._default_headers.items())
        self._default_names = {k.lower() for k in self._default_headers}
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # at first use

    @property
    def closed(self) -> bool:
        return self._closed

    async def post(self, path: str, data: bytes, headers: dict[str, str] | None = None
                   ) -> Response:
        return await self.request("POST", path, data, headers)

    async def request(self, method: str, path: str, data: bytes = b"",
                      headers: dict[str, str] | None = None) -> Response:
        """Send one request (``path`` with its query, from the origin's root) and return
        once the response's status and headers are in."""
        if self._closed:
            raise ClientConnectionError("the connection pool is closed")
        if method == "HEAD":
            raise ValueError("HEAD is not supported (its answer has headers only)")
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        default, extra = self._default, ""
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            given = {k.lower() for k in headers}
            if given & self._default_names:
                # aiohttp's rule: the request's header replaces the pool's of that name;
                # sent both, a server joins them ("application/json,application/json").
                default = "".join(f"{k}: {v}\r\n" for k, v in self._default_headers.items()
                                  if k.lower() not in given)
        head = (f"{method} {path} HTTP/1.1\r\nhost: {self.origin.host_header}\r\n"
                f"content-length: {len(data)}\r\n{default}{extra}\r\n").encode("latin-1")
        for fresh in (False, True):
            conn = await self._acquire(fresh=fresh)
            reused = conn.uses > 0
            try:
                conn.send(head, data)
                return await conn.response(self.read_timeout_s)
            except (ServerDisconnectedError, ConnectionError) as exc:
                conn.close()
                # No byte came and the loss was quick (_last_data is still the send time):
                # the server had closed the idle connection before the request arrived, so
                # it goes once more on a connection of its own. Later, it may have taken it.
                race = (not fresh and reused and not conn.got_bytes
                        and self.loop.time() - conn._last_data < _RACE_S)
                if not race:
                    raise _connection_error(exc) from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable: the second try returns or raises")

    async def _acquire(self, fresh: bool = False) -> _Connection:
        if self._closed:  # closed while this request waited, or before its retry
            raise ClientConnectionError("the connection pool is closed")
        now = self.loop.time()
        while not fresh and self._idle:
            conn = self._idle.pop()
            if (not conn.closed and now - conn.idle_since < self.keepalive_s
                    and conn.transport is not None and not conn.transport.is_closing()):
                return conn
            conn.close()
        while len(self._open) >= self.max_connections:
            if self._idle:  # one came back while we waited
                if not fresh:
                    return await self._acquire()
                # A retry wants a connection of its own: the oldest idle one makes room
                # (taking it instead would only spin here, re-entering this loop).
                self._idle.pop(0).close()
                continue
            waiter = self.loop.create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken, then cancelled before it ran (a client that left): the turn it
                # was given goes to the next waiter, or that one waits for nothing.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            if self._closed:
                raise ClientConnectionError("the connection pool is closed")
            if not fresh and self._idle:
                return await self._acquire()
        return await self._connect()

    async def _connect(self) -> _Connection:
        o = self.origin
        conn = _Connection(self)
        self._open.add(conn)
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: conn, o.host, o.port, ssl=o.ssl,
                server_hostname=o.host if o.ssl else None), self.connect_timeout_s)
        except asyncio.TimeoutError:
            self._open.discard(conn)
            self._wake_one()
            raise
        except (OSError, ssl.SSLError) as exc:
            self._open.discard(conn)
            self._wake_one()
            raise ClientConnectionError(f"cannot connect to {o.host}:{o.port}: "
                                        f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._open.discard(conn)
            self._wake_one()
            raise
        if self._closed or conn.closed:  # the pool closed while this one was opening
            conn.close()
            raise ClientConnectionError("the connection pool is closed")
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        # Reuse is newest first, so after a burst the oldest idle ones sit unreached at
        # the bottom: those past keepalive_s (or closed) go now, not when next reached.
        while self._idle and (self._idle[0].closed or
                              conn.idle_since - self._idle[0].idle_since >= self.keepalive_s):
            self._idle.pop(0).close()
        self._idle.append(conn)
        self._wake_one()

    def _dropped(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            w = self._waiting.popleft()
            if not w.done():
                w.set_result(None)
                return

    def idle_count(self) -> int:
        return len(self._idle)

    def open_count(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._open) + self._idle:
            conn.close()
        self._idle.clear()
        while self._waiting:  # requests waiting for a connection: they fail, none opens
            w = self._waiting.popleft()
            if not w.done():
                w.set_result(None)
        # Let the transports' close callbacks run before the loop moves on.
        await asyncio.sleep(0)


def _connection_error(exc: BaseException) -> ClientConnectionError:
    if isinstance(exc, ServerDisconnectedError):
        return exc
    return ClientConnectionError(f"{type(exc).__name__}: {exc}")

