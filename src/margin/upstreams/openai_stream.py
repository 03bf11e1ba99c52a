"""Reading an OpenAI-compatible stream: server-sent events of chat or completions chunks.

Two readers, one contract (usage, time to first token and one ``Attempt`` on
``call.result``; a body that is not a stream answer is a 502 before the first chunk, an
error inside the stream after it):

- ``read_chunks`` parses every chunk and hands on dicts, for a pipeline that reads or
  translates them (another client dialect, ``log_content``, a stage that needs the text).
- ``relay_events`` hands on the upstream's bytes (``Call.relay``): one block of whole
  events per read from the socket, so small chunks sent fast leave in one write. It parses
  only what metering needs — the first event (is this a stream answer at all?), an event
  carrying ``usage`` and an ``error`` event — found by scanning the bytes; every other event
  is checked only for its frame (``data: {…}``). The usage chunk margin asked for on the
  client's behalf is dropped from the bytes when the client did not ask for it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, AsyncIterator

import aiohttp
import orjson

from margin.errors import UpstreamError
from margin.metering.tokens import estimate_prompt_tokens, estimate_tokens
from margin.types import Call, LastEvents
from margin.upstreams.openai_answers import MalformedAnswer, is_count
from margin.upstreams.stream_book import StreamBook

if TYPE_CHECKING:
    from margin.upstreams.openai_http import HTTPDeployment, OpenAIHTTPUpstream

# SSE lines other than data: (RFC: event, id, retry; a colon starts a comment).
_SSE_OTHER_FIELDS = (b":", b"event:", b"id:", b"retry:", b"event", b"id", b"retry")
_DONE = b"data: [DONE]"
# A block in which every event is one ``data: {…}`` line: relayed without a look inside.
_PLAIN_EVENTS = re.compile(rb"(?:data: ?\{[^\n]*\}\n\n)*")
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ERROR = b'"error"'


def _check_sse(book: StreamBook) -> None:
    kind = book.resp.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise book.refuse(f"upstream {book.dep.label} answered a stream request with "
                          f"{kind[:60] or 'no content type'}, not server-sent events")


def _wants_usage(call: Call) -> bool:
    return bool((call.body.get("stream_options") or {}).get("include_usage"))


def _checked_chunk(book: StreamBook, data: bytes) -> dict[str, Any]:
    """One chunk parsed and checked: an object, its choices objects, no error inside."""
    chunk = orjson.loads(data)
    if not isinstance(chunk, dict):
        raise orjson.JSONDecodeError("not an object", "", 0)
    if "error" in chunk and "choices" not in chunk:
        err = chunk["error"] or {}
        raise book.refuse("upstream stream error: "
                          f"{err.get('message', err) if isinstance(err, dict) else err}")
    choices = chunk.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(
            isinstance(c, dict) for c in choices)):
        raise orjson.JSONDecodeError("choices not a list of objects", "", 0)
    got = chunk.get("usage")
    if got and not (isinstance(got, dict) and all(
            is_count(got.get(k, 0)) for k in ("prompt_tokens", "completion_tokens"))):
        raise orjson.JSONDecodeError("malformed usage", "", 0)
    return chunk


def _pieces(chunk: dict[str, Any]) -> list[str]:
    out = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = delta.get("content") if isinstance(delta, dict) and delta else choice.get("text")
        if isinstance(piece, str) and piece:
            out.append(piece)
    return out


def _settle(up: OpenAIHTTPUpstream, book: StreamBook, usage: dict[str, Any] | None,
            text: str | None) -> None:
    """Usage from the stream's usage chunk, else estimated from the text (``text`` None:
    not collected yet — the relay parses what it sent only in that case)."""
    call = book.call
    elapsed_ms = book.close()
    recorded = False
    if usage:
        try:
            up._record_usage(call, usage, None)
            recorded = True
        except MalformedAnswer:  # odd cached-token details: estimate instead
            pass
    if not recorded and book.billed:
        call.result.set_usage(estimate_prompt_tokens(call.body),
                              estimate_tokens(text or ""), estimated=True)
    if text is not None:
        call.result.notes["stream_text_chars"] = len(text)
    book.attempt(elapsed_ms)


async def read_chunks(up: OpenAIHTTPUpstream, call: Call, dep: HTTPDeployment,
                      resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[dict[str, Any]]:
    """Every chunk parsed, checked and handed on as a dict."""
    client_wants_usage = _wants_usage(call)
    book = StreamBook(up.model.name, call, dep, resp, t0)
    usage = None
    text_parts: list[str] = []
    try:
        with book.reading():
            _check_sse(book)
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    if line.strip() and not line.startswith(_SSE_OTHER_FIELDS):
                        raise book.refuse(f"upstream {dep.label} sent a line that is not "
                                          "server-sent events")
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                if not data:
                    continue
                chunk = _checked_chunk(book, data)
                if call.result.ttft_ms is None:
                    call.result.ttft_ms = call.elapsed_ms()
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not chunk.get("choices") and not client_wants_usage:
                        continue
                    if not client_wants_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                text_parts.extend(_pieces(chunk))
                book.sent += 1
                yield chunk
            if not book.sent:
                raise book.refuse(f"upstream {dep.label} ended the stream without a chunk")
    finally:
        _settle(up, book, usage, "".join(text_parts))


def _screen(book: StreamBook, block: bytes, first: bool, strip_usage: bool
            ) -> tuple[bytes, dict[str, Any] | None, BaseException | None]:
    """The events of ``block`` that go to the client, the usage found, and the failure
    that ends the stream after them (None: no failure). Parses the first data event and
    those that carry usage or an error; checks only the frame of the others."""
    out: list[bytes] = []
    usage = None
    for event in block.split(b"\n\n"):
        if not event:
            continue
        datas = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                datas.append(line[5:].strip())
            elif line.strip() and not line.startswith(_SSE_OTHER_FIELDS):
                return b"".join(out), usage, book.refuse(
                    f"upstream {book.dep.label} sent a line that is not server-sent events")
        datas = [d for d in datas if d]
        if not datas:
            continue  # a comment or keep-alive: nothing for the client
        kept: list[bytes] = []
        changed = False
        for data in datas:
            if not (data[:1] == b"{" and data[-1:] == b"}"):
                return b"".join(out), usage, orjson.JSONDecodeError("not an object", "", 0)
            if not (first or _ERROR in data or _USAGE.search(data)):
                kept.append(data)
                continue
            first = False
            try:
                chunk = _checked_chunk(book, data)
            except (UpstreamError, orjson.JSONDecodeError) as exc:
                return b"".join(out), usage, exc
            if chunk.get("usage"):
                usage = chunk["usage"]
                if strip_usage:
                    changed = True
                    if not chunk.get("choices"):
                        continue
                    data = orjson.dumps({k: v for k, v in chunk.items() if k != "usage"})
            kept.append(data)
        if not changed:
            out.append(event + b"\n\n")
        elif kept:
            out.extend(b"data: " + d + b"\n\n" for d in kept)
    return b"".join(out), usage, None


def _screen_block(book: StreamBook, block: bytes, strip_usage: bool
                  ) -> tuple[bytes, dict[str, Any] | None, BaseException | None]:
    """``_screen`` on only the events of a relayed block that need a look: the stream's
    first event, and an event carrying usage; the rest pass on their frame alone. (A block
    holds every event that arrived since the last read: parsing them all cost more than
    the relay itself.)"""
    if not book.sent:
        if not block.startswith(b"data:"):  # a comment first: the careful way
            return _screen(book, block, True, strip_usage)
        cut = block.find(b"\n\n") + 2
        head, got, failure = _screen(book, block[:cut], True, strip_usage)
        rest = block[cut:]
        if failure is not None or not rest:
            return head, got, failure
        rest, more, failure = _screen_block_rest(book, rest, strip_usage)
        return head + rest, more if more is not None else got, failure
    return _screen_block_rest(book, block, strip_usage)


def _screen_block_rest(book: StreamBook, block: bytes, strip_usage: bool
                       ) -> tuple[bytes, dict[str, Any] | None, BaseException | None]:
    if _ERROR in block:
        return _screen(book, block, False, strip_usage)
    m = _USAGE.search(block)
    if m is None:
        if _PLAIN_EVENTS.fullmatch(block) is not None:
            return block, None, None
        return _screen(book, block, False, strip_usage)
    start = block.rfind(b"\n\n", 0, m.start())
    start = 0 if start < 0 else start + 2
    end = block.find(b"\n\n", m.end())
    end = len(block) if end < 0 else end + 2
    prefix, suffix = block[:start], block[end:]
    if (_PLAIN_EVENTS.fullmatch(prefix) is None or _USAGE.search(suffix) is not None
            or _PLAIN_EVENTS.fullmatch(suffix) is None):
        return _screen(book, block, False, strip_usage)
    event, usage, failure = _screen(book, block[start:end], False, strip_usage)
    if failure is not None:
        return prefix + event, usage, failure
    return prefix + event + suffix, usage, None


def _text_of(blocks: list[bytes]) -> str:
    parts: list[str] = []
    for block in blocks:
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    chunk = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    parts.extend(_pieces(chunk))
    return "".join(parts)


async def relay_events(up: OpenAIHTTPUpstream, call: Call, dep: HTTPDeployment,
                       resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[bytes]:
    """The upstream's events as bytes, one block per socket read (see the module doc)."""
    strip_usage = not _wants_usage(call)
    book = StreamBook(up.model.name, call, dep, resp, t0)
    usage = None
    # What went out, kept by reference: parsed at the end only when no usage came.
    relayed: list[bytes] = []
    try:
        with book.reading():
            _check_sse(book)
            content = resp.content
            pending = b""
            done = False
            while not done:
                data = await content.readany()
                if data:
                    buf = pending + data if pending else data
                    if b"\r" in buf:  # CRLF line ends: the one framing the scans expect
                        buf = buf.replace(b"\r\n", b"\n")
                    end = buf.rfind(b"\n\n")
                    if end < 0:
                        pending = buf
                        continue
                    block, pending = buf[:end + 2], buf[end + 2:]
                elif pending.strip():  # the last event, without its blank line
                    block, pending, done = pending + b"\n\n", b"", True
                else:
                    break
                cut = 0 if block.startswith(_DONE) else block.find(b"\n" + _DONE) + 1
                if cut or block.startswith(_DONE):
                    block, done = block[:cut], True
                block, got, failure = _screen_block(book, block, strip_usage)
                if got is not None:
                    usage = got
                if block:
                    if call.result.ttft_ms is None:
                        call.result.ttft_ms = call.elapsed_ms()
                    book.sent += 1
                    relayed.append(block)
                    yield LastEvents(block) if done else block
                if failure is not None:
                    raise failure
            if not book.sent:
                raise book.refuse(f"upstream {dep.label} ended the stream without a chunk")
    finally:
        _settle(up, book, usage, None if usage else _text_of(relayed))
