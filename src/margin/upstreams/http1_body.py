"""What a request on margin's HTTP/1.1 client (``upstreams/http1.py``) gets back: the
status and headers, and the body as it arrives — the subset of aiohttp's
``ClientResponse`` / ``StreamReader`` that margin's upstreams read (``readany``,
``iter_any``, lines, ``read``, ``release``)."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, AsyncIterator

from aiohttp import ClientPayloadError
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from margin.upstreams.http1 import _Connection

HIGH_WATER = 256 * 1024  # bytes waiting for the reader past which reading pauses


class Body:
    """The response body as it arrives: ``readany``, ``iter_any``, lines, ``read``."""

    __slots__ = ("_conn", "_chunks", "_size", "_eof", "_exc", "_waiter", "_decoder", "_coded")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None
        self._coded = False  # compressed bytes came (an empty body needs no gzip end)

    # -- fed by the connection --------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            self._coded = True
            data = self._decoder.decompress(data)
            if not data:
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn._pause()
        self._wake()

    def _end(self) -> None:
        if self._exc is not None:
            return  # failed first (a timeout, bytes that do not decode): no end after that
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._size += len(tail)
            if self._coded and not self._decoder.eof:
                # The compressed stream stops before its end marker: a body read until
                # the close has no other check that it is whole.
                self._fail(ClientPayloadError("the compressed body ends short"))
                return
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._eof and self._exc is None:  # the first failure is the one to tell
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # -- the reader's side ------------------------------------------------------------
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def readany(self) -> bytes:
        """Every byte that has arrived (waiting for some if none has); b"" at the end."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._conn._wait(self)
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._conn._resume()
        return data

    async def read(self) -> bytes:
        parts = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.readany()
            if not data:
                return
            yield data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        """Lines with their b"\\n" (the last one without, if the body does not end in one)."""
        pending = b""
        while True:
            data = await self.readany()
            if not data:
                if pending:
                    yield pending
                return
            pending = pending + data if pending else data
            start = 0
            while True:
                end = pending.find(b"\n", start)
                if end < 0:
                    break
                yield pending[start:end + 1]
                start = end + 1
            pending = pending[start:]


class Response:
    """What a request got: ``status``, ``headers`` (case-insensitive), ``content``."""

    __slots__ = ("status", "headers", "content", "_conn", "_released")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        self.content = conn.body
        self._conn = conn
        self._released = False

    async def read(self) -> bytes:
        try:
            return await self.content.read()
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back: to the pool when the body was read to its end,
        closed otherwise (what is left of an abandoned answer must not reach the next)."""
        if self._released:
            return
        self._released = True
        self._conn._finished()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
