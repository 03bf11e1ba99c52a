"""A response's status line and headers leave with its first body bytes, in one write.

uvicorn writes the head of a response the moment the app sends ``http.response.start``
and each body message as it comes: a JSON answer costs two socket writes, a relayed stream
one more than its blocks. On a loopback or a busy host every write is a syscall that also
wakes the peer, so two where one would do is measurable CPU per request. The gateway
sends the head and the first body bytes in the same turn of the event loop (the answer
is complete, or the stream's first block has arrived, before the head is sent), so
holding the head until the next write loses no time; a head with no body following in
that turn (an app that sends the start and then waits) leaves at the end of the turn.

``HeldHead`` stands in for the transport of one request's uvicorn cycle, which only ever
writes, closes and asks ``is_closing`` of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

_CONTINUE = b"HTTP/1.1 100 "


class HeldHead:
    """One response cycle's view of the connection's transport."""

    __slots__ = ("_transport", "_loop", "_head", "_flush", "_started")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush: asyncio.Handle | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if self._flush is not None:
                self._flush.cancel()
                self._flush = None
            self._transport.write(head + data)
        elif not self._started and not data.startswith(_CONTINUE):
            self._started = True  # the first write that is not "100 Continue": the head
            self._head = data
            self._flush = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # harmless when it is the handle running this
            self._flush = None
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()  # a head the app never followed with a body still goes out first
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else a later uvicorn asks for
        return getattr(self._transport, name)
