"""A response's head leaves with its first body bytes: one transport write, not two; a head
with nothing after it in the same loop turn leaves at the end of that turn; "100 Continue"
is never held; closing sends a held head first."""

from __future__ import annotations

import asyncio

from margin.gateway.head_writes import HeldHead

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """The socket end of the transport: what was written, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_head_and_body_in_one_write():
    async def go():
        t = Recording()
        h = HeldHead(t, asyncio.get_running_loop())
        h.write(HEAD)
        assert t.writes == []
        h.write(b"{}")
        h.write(b"more")
        await asyncio.sleep(0)
        return t.writes
    assert asyncio.run(go()) == [HEAD + b"{}", b"more"]


def test_a_head_alone_leaves_at_the_end_of_the_turn():
    async def go():
        t = Recording()
        h = HeldHead(t, asyncio.get_running_loop())
        h.write(HEAD)
        await asyncio.sleep(0)
        first = list(t.writes)
        h.write(b"{}")
        return first, t.writes
    first, writes = asyncio.run(go())
    assert first == [HEAD]
    assert writes == [HEAD, b"{}"]


def test_continue_goes_at_once_and_the_head_after_it_is_held():
    async def go():
        t = Recording()
        h = HeldHead(t, asyncio.get_running_loop())
        h.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        sent = list(t.writes)
        h.write(HEAD)
        h.write(b"{}")
        return sent, t.writes
    sent, writes = asyncio.run(go())
    assert sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"{}"]


def test_close_sends_a_held_head_first():
    async def go():
        t = Recording()
        h = HeldHead(t, asyncio.get_running_loop())
        h.write(HEAD)
        h.close()
        await asyncio.sleep(0)  # the cancelled end-of-turn flush writes nothing again
        return t.writes, t.closed
    assert asyncio.run(go()) == ([HEAD], True)
