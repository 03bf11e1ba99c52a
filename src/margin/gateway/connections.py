"""Every connection costs a bounded amount: what uvicorn's HTTP protocol leaves open.

uvicorn times out idle keep-alive connections but never one that has not finished its
request headers, so a client can hold a socket (a file descriptor) forever by sending a
header line every minute — enough of them and every new connection, ``/healthz``
included, is refused. This subclass of its httptools protocol adds:

- a header deadline: from a connection's first byte (or its last response) to the end of
  the next request's headers, at most ``header_timeout_s``, else 408 and close;
- a cap on open connections, in all and per client address: one over it is answered at
  once (503 / 429, OpenAI's error shape) and closed, before any request is read;
- requests the HTTP parser refuses (a bad Content-Length, two of them, broken chunking)
  answered in OpenAI's error shape rather than uvicorn's plain text, each with a ledger
  row when its request line was read (``gateway/rejections.py``);
- a response's head written with its first body bytes (``gateway/head_writes.py``).

The body has its own deadline in the app (``gateway/http.read_body``): it is read there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from margin.gateway.head_writes import HeldHead


# The app puts its recorder for parser-refused requests in the lifespan state under this
# name (the protocol is built before the gateway, and per worker).
PARSER_REJECTION_HOOK = "margin.on_parser_rejection"


def _raw_error(status: str, message: str, error_type: str, code: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": error_type, "code": code,
                                   "param": None}})
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


_TIMEOUT = _raw_error("408 Request Timeout", "request headers not received in time",
                      "invalid_request_error", "request_timeout")
_FULL = _raw_error("503 Service Unavailable", "too many open connections; retry later",
                   "server_error", "overloaded")
_CLIENT_FULL = _raw_error("429 Too Many Requests",
                          "too many open connections from this address",
                          "rate_limit_error", "too_many_connections")


def guarded_protocol(header_timeout_s: float, max_connections: int,
                     max_per_client: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with these limits, for ``uvicorn.Config(http=...)``."""
    per_client: Counter[str] = Counter()

    class GuardedHttpTools(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting_headers = True
        _peer: str | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else None
            if self._peer is not None:
                per_client[self._peer] += 1
            if len(self.connections) > max_connections:
                self._refuse(_FULL)
            elif self._peer is not None and per_client[self._peer] > max_per_client:
                self._refuse(_CLIENT_FULL)
            else:
                self._arm()

        def _refuse(self, answer: bytes) -> None:
            self._awaiting_headers = False
            self.transport.write(answer)
            self.transport.close()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self._awaiting_headers = False
            self._disarm()
            self._record_rejection(msg)
            self.transport.write(_raw_error("400 Bad Request", f"{msg} (refused by the HTTP "
                                            "parser)", "invalid_request_error",
                                            "invalid_http_request"))
            self.transport.close()

        def _record_rejection(self, msg: str) -> None:
            hook = self.app_state.get(PARSER_REJECTION_HOOK)
            url = getattr(self, "url", None)
            if hook is None or not url:
                return  # no request line: bytes that were never a request, nobody to bill
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                return  # the app has this request (a broken body): its row says how it ended
            try:
                method = self.parser.get_method().decode("ascii", "replace")
            except Exception:
                method = "?"
            path = url.split(b"?", 1)[0].decode("latin-1")
            try:
                hook(list(self.headers or ()), method, path, self._peer, msg)
            except Exception:  # accounting must never take the connection handling down
                logging.getLogger("margin.gateway").exception("could not record a refused "
                                                              "request")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Bytes of a request whose headers are not complete yet: the clock runs.
            if self._awaiting_headers and not self.transport.is_closing():
                self._arm()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm()
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.transport is self.transport:  # a new request's
                cycle.transport = HeldHead(self.transport, self.loop)

        def on_response_complete(self) -> None:
            # Idle until the next request: uvicorn's keep-alive timeout covers that. (A
            # pipelined request waiting in line already has its headers.)
            self._awaiting_headers = not self.pipeline
            self._disarm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._peer is not None:
                per_client[self._peer] -= 1
                if per_client[self._peer] <= 0:
                    del per_client[self._peer]
                self._peer = None
            super().connection_lost(exc)

    return GuardedHttpTools
