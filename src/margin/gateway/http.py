"""ASGI plumbing shared by every endpoint: reading a bounded body, sending JSON, decoding
headers."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import orjson

from margin.errors import BadRequest, MarginError, PayloadTooLarge, RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADER = (b"content-type", b"application/json")


class MethodNotAllowed(MarginError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"allow": self.allow}


def request_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class RequestTimeout(RequestError):
    status_code = 408
    code = "request_timeout"


async def read_body(scope: Scope, receive: Receive, max_body: int,
                    timeout_s: float | None = None) -> bytes:
    """The whole request body, refused with 413 past ``max_body`` bytes and with 408 when
    it takes longer than ``timeout_s`` to arrive."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
            if length > max_body:
                raise PayloadTooLarge(f"request body over the limit of {max_body} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_body(receive, max_body)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from None


async def _receive_body(receive: Receive, max_body: int) -> bytes:
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise PayloadTooLarge(f"request body over the limit of {max_body} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, payload: Any,
                    headers: list[tuple[bytes, bytes]] | None = None,
                    raw: bytes | None = None) -> None:
    body = raw if raw is not None else orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    h = [JSON_HEADER, (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})
